"""POST /v1/completions (the legacy text API), as vLLM 0.33 serves it.

`prompt` is a string, a list of strings, a list of token ids or a list of such lists; each prompt
is one engine sequence and one choice, `index = prompt_index * n + i` (n is 1). The prompt's
tokens are the text's own tokens (no chat template); the answer is made like a chat answer to
a user message holding the prompt (structured outputs included), without tools or reasoning.
`max_tokens` defaults to 16. Usage is summed over the prompts.

Stream: one `text_completion` chunk per token, `{"index", "text", "logprobs": null,
"finish_reason", "stop_reason": null}` (the last token's chunk carries the finish_reason; there
is no role chunk), then with `stream_options.include_usage` a chunk with `"choices": []` and the
usage, then `data: [DONE]`.

Refused with a 400: `echo: true`, `suffix`, `n > 1`, `stream_options` without `stream`, an empty prompt.
"""

from __future__ import annotations

from typing import Any

from app.sim.chat import ChunkWriter
from app.sim.completion import Completion, build_completion
from app.sim.job import Call, Job, Piece
from app.sim.protocol import (
    ChatRequest,
    RequestError,
    dumps,
    int_field,
    load_body,
    output_format,
    parse_prompts,
    seed_field,
    stream_flags,
    usage,
)

DEFAULT_MAX_TOKENS = 16


class CompletionsWriter(ChunkWriter):
    """Renders text completions (/v1/completions), as one body or as a stream of chunks."""
    def __init__(self, completion_id: str, created: int, model: str, completions: list[Completion],
                 include_usage: bool) -> None:
        super().__init__(completion_id, created, model, include_usage, "text_completion")
        self.completions = completions

    def body(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The non-stream text completion body."""
        choices = [{"index": i, "text": "".join(text for _, _, text in c.pieces), "logprobs": None,
                    "finish_reason": c.finish_reason, "stop_reason": None}
                   for i, c in enumerate(self.completions)]
        return dumps({"id": self.completion_id, "object": "text_completion", "created": self.created,
                      "model": self.model, "choices": choices,
                      "usage": usage(prompt_tokens, completion_tokens)}).encode()

    def start(self) -> list[str]:
        """Nothing: a text completion stream has no opening chunk."""
        return []

    def delta(self, index: int, pieces: list[Piece], finished: bool) -> list[str]:
        """Chunks for new text of choice ``index``; the last carries the finish reason."""
        reason = self.completions[index].finish_reason
        if not pieces:  # a completion without tokens still says how it finished
            return [self.render.text(index, "", reason)] if finished else []
        last = len(pieces) - 1
        return [self.render.text(index, text, reason if finished and n == last else None)
                for n, (_, _, text) in enumerate(pieces)]


def _refuse_unsupported(body: dict[str, Any]) -> None:
    if body.get("echo"):
        raise RequestError("The simulator does not support `echo`", param="echo")
    if body.get("suffix"):
        raise RequestError("suffix is not currently supported", param="suffix")


def completions_job(call: Call) -> Job:
    """A /v1/completions request as an engine job."""
    config = call.config
    body = load_body(call.raw, config)
    prompts = parse_prompts(body, "prompt")
    stream, include_usage = stream_flags(body)
    _refuse_unsupported(body)
    max_tokens = int_field(body, "max_tokens", 1)
    template = dict(max_tokens=DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens,
                    min_tokens=int_field(body, "min_tokens", 0) or 0, seed=seed_field(body),
                    output_format=output_format(body))
    completions = [build_completion(ChatRequest(messages=[{"role": "user", "content": text}], **template),
                                    config, False, prompt=tokens, bad_output=call.bad_output(i))
                   for i, (text, tokens) in enumerate(prompts)]
    writer = CompletionsWriter(call.response_id("cmpl-"), call.created, config.model, completions, include_usage)
    return Job(completions, writer, stream)
