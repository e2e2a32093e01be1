"""vLLM's answer, relayed: the bytes as they come, read only for the books.

A stream is cut into SSE events at blank lines; each event goes on as the same bytes, except the
usage-only chunk (stripped unless the client asked for usage) and an error event (its text, which may
name internal hosts, goes to the log; the client gets a clean one). Events are decoded with small
``msgspec`` structs that skip what the books do not need (``choices`` stays raw).
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import structlog

from app.services.lm.calls import Call
from app.services.lm.errors import MAX_LOGGED_BODY_CHARS
from app.services.lm.stream import ChunkUsage

log = structlog.get_logger("vgate.passthrough")


class _Piece(msgspec.Struct):
    """A chat/completions chunk or body, or an embeddings body."""

    model: str | None = None
    choices: list[msgspec.Raw] | None = None
    usage: ChunkUsage | None = None
    error: Any = None  # an error after the stream began: {"message", ...} (msgspec.Raw cannot be optional)


class _ResponsesUsage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0


class _ResponsesBody(msgspec.Struct):
    model: str | None = None
    usage: _ResponsesUsage | None = None


class _ResponsesEvent(msgspec.Struct):
    type: str = ""
    response: _ResponsesBody | None = None


_piece = msgspec.json.Decoder(_Piece)
_responses_body = msgspec.json.Decoder(_ResponsesBody)
_responses_event = msgspec.json.Decoder(_ResponsesEvent)

_DONE = b"data: [DONE]"
_RESPONSES_END = ("response.completed", "response.failed", "response.incomplete")


def event_end(buf: bytes, start: int = 0) -> tuple[int, int]:
    """Where the first SSE event from ``start`` ends, and the blank line's length: vLLM frames with
    ``\\n\\n``, a proxy in front of it may use ``\\r\\n\\r\\n``. (-1, 0) when none is complete yet."""
    lf = buf.find(b"\n\n", start)
    crlf = buf.find(b"\r\n\r\n", start)
    if crlf != -1 and (lf == -1 or crlf < lf):
        return crlf, 4
    return lf, (2 if lf != -1 else 0)


def error_chunk(message: str, type: str, code: int, request_id: str | None) -> bytes:
    """An error after the stream began, as vLLM sends one (it follows with ``[DONE]``)."""
    body = {"error": {"message": message, "type": type, "param": None, "code": code, "request_id": request_id}}
    return b"data: " + msgspec.json.encode(body) + b"\n\n"


def error_event(message: str, type: str, code: int, request_id: str | None) -> bytes:
    """The gateway's own end of a stream that broke: the error chunk and ``[DONE]``."""
    return error_chunk(message, type, code, request_id) + _DONE + b"\n\n"


def read_usage(call: Call, body: bytes, responses_api: bool) -> bool:
    """The usage of a whole (non-stream) answer into the call's books; False when the body is not
    the JSON object it should be (then it must not reach the client as a 200)."""
    try:
        if responses_api:
            r = _responses_body.decode(body)
            if r.usage is not None:
                call.acc.usage = ChunkUsage(r.usage.input_tokens, r.usage.output_tokens)
            call.acc.model = r.model
        else:
            p = _piece.decode(body)
            call.acc.usage = p.usage
            call.acc.model = p.model
    except msgspec.DecodeError:
        log.warning("upstream_malformed", what="an answer of an unexpected shape", excerpt=body[:200])
        return False
    return True


class StreamReader:
    """Cuts a stream into events, notes what the books need, returns the bytes to pass on."""

    __slots__ = ("call", "keep_usage", "responses_api", "done", "failed", "_pending", "_request_id", "_stopped")

    def __init__(self, call: Call, *, keep_usage: bool, responses_api: bool, request_id: str | None) -> None:
        self.call = call
        self.keep_usage = keep_usage
        self.responses_api = responses_api
        self.done = False  # [DONE], or the Responses API's last event
        self.failed: str | None = None  # the error type, when the upstream's stream failed
        self._pending = b""
        self._request_id = request_id
        self._stopped = False  # ended by the gateway: nothing more is passed on

    def feed(self, data: bytes) -> bytes:
        """The complete events in ``data`` (and what was left over before it), ready to send."""
        if self._stopped:
            return b""
        buf = self._pending + data if self._pending else data
        out: list[bytes] = []
        start = 0
        while not self._stopped:
            end, sep = event_end(buf, start)
            if end == -1:
                break
            event = buf[start:end + sep]
            start = end + sep
            kept = self._event(event)
            if kept is not None:
                out.append(kept)
        self._pending = buf[start:]
        return b"".join(out)

    @property
    def has_partial(self) -> bool:
        """Whether a partial event is buffered (the stream broke mid-event)."""
        return bool(self._pending.strip())

    def _event(self, event: bytes) -> bytes | None:
        if self.responses_api:
            return self._responses(event)
        if not event.startswith(b"data:"):
            return event  # a comment (": keep-alive") or another field: passed on
        data = event[5:].strip()
        if data == b"[DONE]":
            self.done = True
            return event
        try:
            piece = _piece.decode(data)
        except msgspec.DecodeError:
            log.warning("upstream_malformed", what="a chunk of an unexpected shape", excerpt=data[:200])
            return self._end_with("upstream sent a chunk of an unexpected shape", "upstream_malformed")
        call = self.call
        if piece.error is not None:
            err = piece.error
            message = err.get("message") if isinstance(err, dict) else err
            log.warning("upstream_stream_error", upstream_message=str(message)[:MAX_LOGGED_BODY_CHARS])
            return self._end_with("upstream failed mid-stream", "upstream_stream_error")
        if piece.model and call.acc.model is None:
            call.acc.model = piece.model
        if piece.usage is not None:
            call.acc.usage = piece.usage
            if not piece.choices and not self.keep_usage:
                return None  # the usage-only chunk the gateway asked for, not the client
        if piece.choices:
            if call.ttft is None:
                call.ttft = time.perf_counter() - call.started
            call.acc.token_chunks += 1
        return event

    def _end_with(self, message: str, type: str) -> bytes:
        """The stream ends here, whatever the upstream sends after: the gateway's error and [DONE]."""
        self.failed, self.done, self._stopped = type, True, True
        return error_event(message, type, 502, self._request_id)

    def _responses(self, event: bytes) -> bytes | None:
        data_at = event.find(b"data:")
        if data_at == -1:
            return event
        data = event[data_at + 5:].strip()
        try:
            ev = _responses_event.decode(data)
        except msgspec.DecodeError:
            return event
        call = self.call
        if ev.type.endswith(".delta"):
            if call.ttft is None:
                call.ttft = time.perf_counter() - call.started
            call.acc.token_chunks += 1
        elif ev.type in _RESPONSES_END:
            self.done = True
            if ev.type == "response.failed":
                self.failed = "upstream_stream_error"
            body = ev.response
            if body is not None and body.usage is not None:
                call.acc.usage = ChunkUsage(body.usage.input_tokens, body.usage.output_tokens)
                call.acc.model = body.model
        elif ev.type == "error":
            self.failed = "upstream_stream_error"
        return event


