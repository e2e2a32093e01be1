"""vLLM's stream, read: SSE bytes → typed chunks → events, folded into one result.

Chunks are decoded straight from JSON into typed ``msgspec`` structs: 0.4 µs a chunk against
2.6–2.8 µs for ``json.loads`` and walking the dicts, and 2.5 µs for pydantic's
``model_validate_json`` (``benchmarks/chunk_parse.py``, figures in benchmarks/RESULTS.md). It runs
once per streamed token. A chunk
of another shape is an ``upstream_malformed`` error at the decode, not a ``TypeError`` deep in the
fold. Unknown fields are ignored, as vLLM adds fields between releases.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec

from app.errors import UpstreamError
from app.services.lm.errors import log, malformed
from app.services.lm.types import ContentDelta, LMChoice, ReasoningDelta, StreamEvent, ToolCall, ToolCallDelta

Count = Annotated[int, msgspec.Meta(ge=0)]


class FunctionDelta(msgspec.Struct):
    """A fragment of a streamed tool call's function: its name and a piece of its arguments."""
    name: str | None = None
    arguments: str | None = None


class ToolCallChunk(msgspec.Struct):
    """One tool call's fragment in a streamed chunk, by its index."""
    index: Count = 0
    id: str | None = None
    function: FunctionDelta | None = None


class Delta(msgspec.Struct):
    """The new text, reasoning and tool-call fragments of one streamed choice."""
    content: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None  # vLLM before 0.10
    tool_calls: list[ToolCallChunk] | None = None


class Choice(msgspec.Struct):
    """One choice of a streamed chunk: its delta and, at the end, its finish reason."""
    index: Count = 0
    delta: Delta | None = None
    finish_reason: str | None = None


class ChunkUsage(msgspec.Struct):
    """The token counts of a stream's usage chunk."""
    prompt_tokens: Count = 0
    completion_tokens: Count = 0


class Chunk(msgspec.Struct):
    """One chunk of an OpenAI-style chat or completion stream, decoded by msgspec."""
    id: str | None = None
    model: str | None = None
    choices: list[Choice] = []
    usage: ChunkUsage | None = None
    error: dict[str, Any] | str | None = None  # an error after the stream started (HTTP 200)


_decoder = msgspec.json.Decoder(Chunk)


class EndOfStream(Exception):
    """The connection closed without ``[DONE]``."""


def parse_chunk(data: str | bytes) -> Chunk:
    """Decode one SSE data payload into a Chunk; a payload of another shape is an upstream_malformed error."""
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, UnicodeError):  # ValidationError is a DecodeError
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        raise malformed("a chunk of an unexpected shape", text) from None


class ChunkReader:
    """The chunks of an SSE stream of bytes, one ``await next()`` at a time; None after ``[DONE]``.

    Lines are split as bytes, never decoded to text (the JSON decoder takes bytes), on ``\\n``,
    ``\\r\\n`` or ``\\r`` as SSE allows; a ``\\r\\n`` split between two reads gives one extra empty
    line (an SSE no-op), and a last line without an ending is read when the stream ends. Only
    ``data:`` lines count: blank lines, comments (``: keep-alive``) and other fields are skipped.
    The lines of one network read are kept in a list and handed out from it: an async generator
    per line (and another per chunk over it) cost a resumption each, twice per streamed token."""

    __slots__ = ("_reads", "_lines", "_at", "_tail", "_ended")

    def __init__(self, reads: AsyncIterator[bytes]) -> None:
        self._reads = reads
        self._lines: list[bytes] = []
        self._at = 0
        self._tail = b""
        self._ended = False

    async def next(self) -> Chunk | None:
        """The next chunk; None after ``[DONE]``. Raises ``EndOfStream`` if the stream ended without it."""
        while True:
            lines, at = self._lines, self._at
            while at < len(lines):
                line = lines[at]
                at += 1
                if line.startswith(b"data:"):
                    self._at = at
                    data = line[5:].lstrip(b" ")
                    return None if data == b"[DONE]" else parse_chunk(data)
            self._at = at
            await self._read()

    async def _read(self) -> None:
        if self._ended:
            raise EndOfStream
        try:
            chunk = await anext(self._reads)
        except StopAsyncIteration:
            self._ended = True
            self._lines, self._at, self._tail = ([self._tail] if self._tail else []), 0, b""
            return
        if self._tail:
            chunk = self._tail + chunk
        lines = chunk.splitlines()  # bytes: only \n, \r\n and \r end a line
        self._tail = b"" if chunk.endswith((b"\n", b"\r")) else lines.pop() if lines else b""
        self._lines, self._at = lines, 0

    async def aclose(self) -> None:
        """Close the reads under it (the connection's body)."""
        aclose = getattr(self._reads, "aclose", None)
        if aclose is not None:
            await aclose()


class OtherChoice:
    """What a choice past the first (vLLM's ``n`` > 1) streamed: its text and how it finished."""

    __slots__ = ("content", "reasoning", "finish_reason")

    def __init__(self) -> None:
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.finish_reason: str | None = None


class Accumulator:
    """Folds streamed chunks into one result, and counts what was streamed (for a call cut short).

    Choice 0 makes the events and the result's text; the choices past it (``n`` > 1: vLLM streams
    each chunk for one choice, ``index`` saying which) are folded apart, in ``others``, with no events."""

    __slots__ = ("id", "content", "reasoning", "tools", "finish_reason", "usage", "model", "token_chunks", "others")

    def __init__(self) -> None:
        self.id: str | None = None
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.tools: dict[int, list[Any]] = {}  # index -> [id, name, [fragments]]
        self.finish_reason: str | None = None
        self.usage: ChunkUsage | None = None
        self.model: str | None = None
        self.token_chunks = 0  # chunks that carried generated text: ~ one token each in vLLM
        self.others: dict[int, OtherChoice] | None = None  # choices 1.. (n > 1)

    def feed(self, chunk: Chunk) -> list[StreamEvent]:
        """Add a chunk to the call's text, reasoning, tool calls and usage; return the events it yields."""
        if chunk.error is not None:
            err = chunk.error
            log.warning("upstream_stream_error", upstream_message=str(err.get("message") if isinstance(err, dict)
                                                                      else err)[:2000])
            raise UpstreamError("upstream failed mid-stream", type="upstream_stream_error")
        if self.id is None:
            self.id = chunk.id
        if chunk.model:
            self.model = chunk.model
        if chunk.usage is not None:
            self.usage = chunk.usage
        events: list[StreamEvent] = []
        for choice in chunk.choices:
            if choice.index:
                self._other(choice)
                continue
            delta = choice.delta
            if delta is not None:
                if delta.content:
                    self.content.append(delta.content)
                    events.append(ContentDelta(delta.content))
                thought = delta.reasoning or delta.reasoning_content
                if thought:
                    self.reasoning.append(thought)
                    events.append(ReasoningDelta(thought))
                for tc in delta.tool_calls or ():
                    slot = self.tools.setdefault(tc.index, [None, None, []])
                    fn = tc.function
                    name = fn.name if fn is not None else None
                    frag = (fn.arguments if fn is not None else None) or ""
                    if tc.id:
                        slot[0] = tc.id
                    if name:
                        slot[1] = name
                    if frag:
                        slot[2].append(frag)
                    events.append(ToolCallDelta(tc.index, tc.id, name, frag))
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
        if events:
            self.token_chunks += 1
        return events

    def _other(self, choice: Choice) -> None:
        if self.others is None:
            self.others = {}
        other = self.others.get(choice.index)
        if other is None:
            other = self.others[choice.index] = OtherChoice()
        delta = choice.delta
        if delta is not None:
            thought = delta.reasoning or delta.reasoning_content
            if delta.content:
                other.content.append(delta.content)
            if thought:
                other.reasoning.append(thought)
            if delta.content or thought:
                self.token_chunks += 1
        if choice.finish_reason:
            other.finish_reason = choice.finish_reason

    def finished(self, n: int = 1) -> bool:
        """Whether each of the ``n`` choices said how it finished (else the stream was cut off)."""
        if self.finish_reason is None:
            return False
        if n <= 1:
            return True
        others = self.others or {}
        return all(i in others and others[i].finish_reason is not None for i in range(1, n))

    def choices(self, n: int) -> list[LMChoice]:
        """The ``n`` choices, in index order (choice 0 from the main fold)."""
        out = [LMChoice(0, "".join(self.content), "".join(self.reasoning) or None, self.finish_reason)]
        others = self.others or {}
        for i in range(1, n):
            o = others.get(i)
            out.append(LMChoice(i, "".join(o.content), "".join(o.reasoning) or None, o.finish_reason) if o is not None
                       else LMChoice(i, "", None, None))
        return out

    def tool_calls(self) -> list[ToolCall]:
        """The tool calls assembled from the streamed fragments, in index order."""
        return [
            ToolCall(id=tid or f"call_{idx}", name=name or "", arguments="".join(frags) or "{}")
            for idx, (tid, name, frags) in sorted(self.tools.items())
        ]
