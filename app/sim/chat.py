"""POST /v1/chat/completions: the request becomes a job; its answer is a `chat.completion` or its chunks."""

from __future__ import annotations

from app.sim.completion import Completion, build_completion
from app.sim.job import Call, Job, Piece
from app.sim.protocol import DONE, ChunkRenderer, completion_body, parse_chat_request, usage

_DONE = DONE.decode()


class ChunkWriter:
    """What chat and text completions streams share: the ids, the usage chunk, `[DONE]`, the error event."""

    def __init__(self, completion_id: str, created: int, model: str, include_usage: bool,
                 obj: str = "chat.completion.chunk") -> None:
        self.completion_id, self.created, self.model = completion_id, created, model
        self.include_usage = include_usage
        self.render = ChunkRenderer(completion_id, created, model, obj)

    def end(self, prompt_tokens: int, completion_tokens: int) -> list[str]:
        if self.include_usage:
            return [self.render.usage(usage(prompt_tokens, completion_tokens)), _DONE]
        return [_DONE]

    def error(self, message: str, status: int) -> list[str]:
        return [ChunkRenderer.error(message, status), _DONE]


class ChatWriter(ChunkWriter):
    def __init__(self, completion_id: str, created: int, model: str, completion: Completion,
                 include_usage: bool) -> None:
        super().__init__(completion_id, created, model, include_usage)
        self.completion = completion

    def body(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        c = self.completion
        return completion_body(self.completion_id, self.created, self.model, c.message(), c.finish_reason,
                               usage(prompt_tokens, completion_tokens))

    def start(self) -> list[str]:
        return [self.render.role()]

    def delta(self, index: int, pieces: list[Piece], finished: bool) -> list[str]:
        render, delta = self.render.delta, self.completion.delta
        events = [render(delta(piece)) for piece in pieces]
        if finished:
            reason = self.completion.finish_reason
            events.append(render("{}" if reason == "tool_calls" else '{"content":""}', reason))
        return events


def chat_job(call: Call) -> Job:
    req = parse_chat_request(call.raw, call.config)
    completion = build_completion(req, call.config, call.thinking(req.enable_thinking))
    writer = ChatWriter(call.response_id("chatcmpl-"), call.created, call.config.model, completion,
                        req.include_usage)
    return Job([completion], writer, req.stream)
