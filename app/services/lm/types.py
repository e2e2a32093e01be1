"""What the LM client hands its callers: results, usage, tool calls, stream events, served models."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Usage:
    """Token counts of one or more upstream calls."""
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: Usage) -> None:
        """Add another call's tokens to these."""
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens

    def as_dict(self) -> dict[str, int]:
        """The counts as the API reports them, total included."""
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
    """A tool call the model made: its id, the tool's name and the arguments as JSON text."""
    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it

    def as_openai(self) -> dict[str, Any]:
        """The call in OpenAI's message form (an assistant message's tool_calls item)."""
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
    """Streamed assistant text."""
    text: str


@dataclass(slots=True)
class ReasoningDelta:
    """Streamed reasoning text."""
    text: str


@dataclass(slots=True)
class ToolCallDelta:
    """A fragment of a streamed tool call."""
    index: int
    id: str | None
    name: str | None
    arguments: str  # a fragment to concatenate


@dataclass(slots=True)
class Done:
    """The end of a stream, with the call's whole result."""
    result: LMResult


StreamEvent = ContentDelta | ReasoningDelta | ToolCallDelta | Done


@dataclass
class UpstreamModel:
    """A model as an upstream lists it, with its context length when given."""
    id: str
    max_model_len: int | None = None
    raw: dict[str, Any] = field(default_factory=dict)
