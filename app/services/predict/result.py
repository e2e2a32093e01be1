"""What a prediction returns: one input's :class:`Prediction`, and a batch's :class:`BatchResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.errors import VGateError
from app.services.lm import Usage


@dataclass(slots=True)
class Prediction:
    """One prediction: typed outputs, reasoning, vote and repair details, usage, cost and timing."""
    outputs: dict[str, Any]
    reasoning: str | None
    usage: Usage  # every upstream call it made: repairs included, all the samples of a vote
    cost_usd: float
    latency_ms: float
    ttft_ms: float | None  # the first call's
    model: str
    repairs: int = 0  # repair calls made (config.repair)
    agreement: dict[str, float] | None = None  # a vote's: per field, the share of valid samples agreeing
    samples: int | None = None  # a vote's: samples drawn (n) ...
    valid_samples: int | None = None  # ... and how many matched the signature (those voted)

    def as_dict(self) -> dict[str, Any]:
        """The prediction as /predict answers it (fields that do not apply left out)."""
        d: dict[str, Any] = {"outputs": self.outputs}
        if self.reasoning is not None:
            d["reasoning"] = self.reasoning
        if self.samples is not None:
            d.update(agreement=self.agreement, samples=self.samples, valid_samples=self.valid_samples)
        if self.repairs:
            d["repairs"] = self.repairs
        d.update(
            usage=self.usage.as_dict(),
            cost_usd=self.cost_usd,
            latency_ms=round(self.latency_ms, 2),
            ttft_ms=round(self.ttft_ms, 2) if self.ttft_ms is not None else None,
            model=self.model,
        )
        return d


@dataclass(slots=True)
class BatchResult:
    """A batch's items in input order (a prediction or an error each), with their summed usage and cost."""
    items: list[Prediction | VGateError]
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    latency_ms: float = 0.0

    @property
    def failed(self) -> int:
        """How many items failed."""
        return sum(isinstance(i, VGateError) for i in self.items)
