"""What the LM client hands its callers: results, usage, tool calls, stream events, served models."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(slots=True)
class CallUsage:
    """The tokens and cost of one upstream call, handed to ``on_usage`` exactly once per call that
    reached the upstream: exact from vLLM's usage chunk, or ``estimated`` for a call cut short
    (cancelled, or failed mid-stream) — completion tokens from the chunks streamed (vLLM streams
    about one token per chunk), prompt tokens from the prompt's size."""

    usage: Usage
    cost_usd: float
    estimated: bool = False


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it

    def as_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(slots=True)
class LMChoice:
    """One of the choices of a call (vLLM's ``n``): its text and how it finished."""

    index: int
    content: str
    reasoning: str | None
    finish_reason: str | None


@dataclass(slots=True)
class LMResult:
    """One call's answer. ``content``, ``reasoning`` and ``finish_reason`` are choice 0's; ``choices``
    has every choice in index order (one, unless the call asked for ``n`` > 1); ``usage`` covers them
    all (vLLM: the prompt once, the completion tokens summed over the choices)."""

    content: str
    reasoning: str | None
    tool_calls: list[ToolCall]
    finish_reason: str | None
    usage: Usage
    model: str
    cost_usd: float
    latency_ms: float
    ttft_ms: float | None
    tokens_per_s: float | None
    attempts: int
    upstream_id: str | None = None
    queue_ms: float = 0.0
    choices: list[LMChoice] = field(default_factory=list)


# Stream events handed to callers of ``stream_chat``.
@dataclass(slots=True)
class ContentDelta:
    text: str


@dataclass(slots=True)
class ReasoningDelta:
    text: str


@dataclass(slots=True)
class ToolCallDelta:
    index: int
    id: str | None
    name: str | None
    arguments: str  # a fragment to concatenate


@dataclass(slots=True)
class Done:
    result: LMResult


StreamEvent = ContentDelta | ReasoningDelta | ToolCallDelta | Done


@dataclass
class UpstreamModel:
    id: str
    max_model_len: int | None = None
    raw: dict[str, Any] = field(default_factory=dict)
