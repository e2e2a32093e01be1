"""Run a signature against the model: one input or a batch, typed outputs, chain of thought.

Outputs are constrained by vLLM structured outputs (``response_format`` json_schema built from the
signature) and then validated into the declared types; a reply that still fails, or that was cut
off by ``max_tokens``, is a clear error carrying the raw text, never a wrong type.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from app.errors import OutputTruncatedError, VGateError
from app.metrics import Metrics
from app.services.adapter import build_messages, demo_messages, response_format
from app.services.lm import LMClient, Usage
from app.services.programs import Module, PredictConfig
from app.services.signature import Signature
from app.settings import Settings

log = structlog.get_logger("vgate.predict")


@dataclass(slots=True)
class Prediction:
    outputs: dict[str, Any]
    reasoning: str | None
    usage: Usage
    cost_usd: float
    latency_ms: float
    ttft_ms: float | None
    model: str

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"outputs": self.outputs}
        if self.reasoning is not None:
            d["reasoning"] = self.reasoning
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
    items: list[Prediction | VGateError]
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    latency_ms: float = 0.0

    @property
    def failed(self) -> int:
        return sum(isinstance(i, VGateError) for i in self.items)


class PredictService:
    def __init__(self, lm: LMClient, settings: Settings, metrics: Metrics) -> None:
        self.lm = lm
        self.settings = settings
        self.metrics = metrics

    def _prepare(self, signature: Signature, module: Module) -> tuple[Signature, dict[str, Any]]:
        sig = signature.with_reasoning() if module == "chain_of_thought" else signature
        return sig, response_format(sig)

    async def predict(
        self,
        signature: Signature,
        inputs: dict[str, Any],
        *,
        module: Module = "predict",
        demos: list[dict[str, Any]] | None = None,
        model: str | None = None,
        config: PredictConfig | None = None,
        priority_route: str = "predict",
    ) -> Prediction:
        """One input. ``priority_route`` names the route whose priority class the call gets (an
        evaluation's or optimization's calls run at ``evaluate``'s or ``optimize``'s, batch)."""
        sig, fmt = self._prepare(signature, module)
        values = signature.validate_inputs(inputs)
        return await self._run(sig, fmt, values, module, demos, model, config, priority_route)

    async def predict_batch(
        self,
        signature: Signature,
        batch: list[dict[str, Any]],
        *,
        module: Module = "predict",
        demos: list[dict[str, Any]] | None = None,
        model: str | None = None,
        config: PredictConfig | None = None,
    ) -> BatchResult:
        """Every item is submitted at once (the upstreams' slots are the only limit), so vLLM batches
        them; each item succeeds or fails on its own. The batch runs at the ``predict_batch`` route's
        priority, and is refused whole (a 429) when the upstreams cannot take it now."""
        sig, fmt = self._prepare(signature, module)
        demo_messages(sig, demos)  # a malformed demo fails the request once, not each item
        model = await self.lm.admit_batch(model, len(batch), "predict_batch")
        started = time.perf_counter()

        async def one(i: int, inputs: dict[str, Any]) -> Prediction | VGateError:
            try:
                values = signature.validate_inputs(inputs)
                return await self._run(sig, fmt, values, module, demos, model, config, "predict_batch")
            except VGateError as exc:
                return exc
            except Exception:  # a bug must fail this item, not the batch (gather would not cancel the rest)
                log.exception("batch_item_crashed", index=i)
                return VGateError("internal error on this item; the request id is in the logs")

        items = await asyncio.gather(*(one(i, x) for i, x in enumerate(batch)))
        result = BatchResult(items=list(items), latency_ms=(time.perf_counter() - started) * 1000)
        for item in items:
            if isinstance(item, Prediction):
                result.usage.add(item.usage)
                result.cost_usd += item.cost_usd
        return result

    async def _run(
        self,
        sig: Signature,
        fmt: dict[str, Any],
        values: dict[str, Any],
        module: Module,
        demos: list[dict[str, Any]] | None,
        model: str | None,
        config: PredictConfig | None,
        priority_route: str,
    ) -> Prediction:
        params = (config or PredictConfig()).upstream_params()
        params.setdefault("max_tokens", self.settings.predict_default_max_tokens)
        messages = build_messages(sig, values, demos)
        outcome = "error"
        try:
            r = await self.lm.chat(
                messages, model=model, route="predict", priority_route=priority_route, response_format=fmt, **params
            )
            if self.settings.log_prompts:
                log.info("predict_io", messages=messages, completion=r.content)
            if r.finish_reason == "length":
                outcome = "truncated"
                raise OutputTruncatedError(
                    f"the model hit max_tokens={params['max_tokens']} before finishing its answer; "
                    "raise config.max_tokens or shorten the task",
                    raw=r.content,
                    max_tokens=params["max_tokens"],
                )
            try:
                outputs = sig.parse_outputs(r.content)
            except VGateError:
                outcome = "invalid_output"
                raise
            outcome = "ok"
        finally:
            self.metrics.predictions.labels(module=module, outcome=outcome).inc()
        reasoning = outputs.pop("reasoning", None) if module == "chain_of_thought" else None
        return Prediction(
            outputs=outputs,
            reasoning=reasoning,
            usage=r.usage,
            cost_usd=r.cost_usd,
            latency_ms=r.latency_ms,
            ttft_ms=r.ttft_ms,
            model=r.model,
        )
