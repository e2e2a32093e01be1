"""POST /v1/chat/completions: the request becomes a job; its answer is a `chat.completion` or its chunks.

`n` choices are n engine sequences of the one prompt (vLLM shares its KV cache; here the prefix
cache serves what it already holds), each its own sample (completion.py). As vLLM counts them: the
prompt once, the completion tokens summed over the choices. A stream opens with a role chunk per choice, then each chunk
carries one choice's delta, `index` saying which.
"""

from __future__ import annotations

from app.sim.completion import Completion, build_completion
from app.sim.job import Call, Job, Piece
from app.sim.protocol import DONE, ChunkRenderer, completion_body, parse_chat_request, usage
from app.sim.tokens import prompt_tokens

_DONE = DONE.decode()


class ChunkWriter:
    """What chat and text completions streams share: the ids, the usage chunk, `[DONE]`, the error event."""

    def __init__(self, completion_id: str, created: int, model: str, include_usage: bool,
                 obj: str = "chat.completion.chunk") -> None:
        self.completion_id, self.created, self.model = completion_id, created, model
        self.include_usage = include_usage
        self.render = ChunkRenderer(completion_id, created, model, obj)

    def end(self, prompt_tokens: int, completion_tokens: int) -> list[str]:
        """The events that close a stream: the usage chunk when asked for, then [DONE]."""
        if self.include_usage:
            return [self.render.usage(usage(prompt_tokens, completion_tokens)), _DONE]
        return [_DONE]

    def error(self, message: str, status: int) -> list[str]:
        """An error event mid-stream, then [DONE] (as vLLM does)."""
        return [ChunkRenderer.error(message, status), _DONE]


class ChatWriter(ChunkWriter):
    """Renders chat completions, as one body or as a stream of chunks."""
    def __init__(self, completion_id: str, created: int, model: str, completions: list[Completion],
                 include_usage: bool) -> None:
        super().__init__(completion_id, created, model, include_usage)
        self.completions = completions

    def body(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The non-stream chat completion body, every choice with its message and finish reason."""
        return completion_body(self.completion_id, self.created, self.model,
                               [(c.message(), c.finish_reason) for c in self.completions],
                               usage(prompt_tokens, completion_tokens))

    def start(self) -> list[str]:
        """The first chunk of each choice: the assistant role."""
        return [self.render.role(i) for i in range(len(self.completions))]

    def delta(self, index: int, pieces: list[Piece], finished: bool) -> list[str]:
        """Chunks for new pieces (text, reasoning, tool calls) of choice ``index``; the last carries the finish
        reason."""
        completion = self.completions[index]
        render, delta = self.render.delta, completion.delta
        events = [render(delta(piece), None, index) for piece in pieces]
        if finished:
            reason = completion.finish_reason
            events.append(render("{}" if reason == "tool_calls" else '{"content":""}', reason, index))
        return events


def chat_job(call: Call) -> Job:
    """A /v1/chat/completions request as an engine job: parsed, checked, its completions planned."""
    req = parse_chat_request(call.raw, call.config)
    thinking = call.thinking(req.enable_thinking)
    first = build_completion(req, call.config, thinking, bad_output=call.bad_output(0))
    completions = [first]
    if req.n > 1:
        prompt = prompt_tokens(req.messages, req.tools)
        completions += [build_completion(req, call.config, thinking, prompt, sample=i, bad_output=call.bad_output(i))
                        for i in range(1, req.n)]
    writer = ChatWriter(call.response_id("chatcmpl-"), call.created, call.config.model, completions,
                        req.include_usage)
    return Job(completions, writer, req.stream, shared_prompt=True)
