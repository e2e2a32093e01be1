"""Run a signature against the model: one input or a batch, typed outputs, chain of thought, repair
and majority votes.

Outputs are constrained by vLLM structured outputs (``response_format`` json_schema built from the
signature) and then validated into the declared types; a reply that still fails, or that was cut
off by ``max_tokens``, is repaired (``repair.py``, up to ``config.repair`` more calls, default 1) or
is a clear error carrying the raw text, never a wrong type.

Voting (``voting.py``): module ``majority`` (``config.n`` samples, default 5), or any module with
``config.n`` > 1 (chain_of_thought votes on its outputs, not its reasoning), draws the samples in one
upstream call and votes per output field.

Every prediction has one deadline, ``request_timeout_s`` from its start (a batch's items: from the
batch's start), that bounds all of its calls.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from app.errors import OutputTruncatedError, OutputValidationError, VGateError
from app.metrics import Metrics
from app.services.adapter import build_messages, demo_messages, response_format
from app.services.lm import LMClient, LMResult
from app.services.predict.repair import Ask, Spent, with_repair
from app.services.predict.result import BatchResult, Prediction
from app.services.predict.voting import SampleAsk, voted
from app.services.programs import Module, PredictConfig
from app.services.signature import REASONING_FIELD, Signature
from app.settings import Settings

log = structlog.get_logger("vgate.predict")

DEFAULT_REPAIR = 1
DEFAULT_MAJORITY_N = 5


def sample_count(module: Module, config: PredictConfig) -> int:
    """How many samples the prediction votes over (1: no vote)."""
    if module == "majority":
        return config.n or DEFAULT_MAJORITY_N
    return config.n or 1


class PredictService:
    """Runs signatures against the model: prompt, constrained call, validation, repairs, votes and batches."""
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
        deadline = time.perf_counter() + self.settings.request_timeout_s
        sig, fmt = self._prepare(signature, module)
        values = signature.validate_inputs(inputs)
        return await self._run(sig, fmt, values, module, demos, model, config, priority_route, deadline)

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
        them; each item succeeds or fails (and is repaired) on its own. The batch runs at the
        ``predict_batch`` route's priority, and is refused whole (a 429) when the upstreams cannot
        take it now."""
        deadline = time.perf_counter() + self.settings.request_timeout_s
        sig, fmt = self._prepare(signature, module)
        demo_messages(sig, demos)  # a malformed demo fails the request once, not each item
        model = await self.lm.admit_batch(model, len(batch), "predict_batch")
        started = time.perf_counter()

        async def one(i: int, inputs: dict[str, Any]) -> Prediction | VGateError:
            try:
                values = signature.validate_inputs(inputs)
                return await self._run(sig, fmt, values, module, demos, model, config, "predict_batch", deadline)
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
        deadline: float,
    ) -> Prediction:
        cfg = config or PredictConfig()
        params = cfg.upstream_params()
        max_tokens = params.setdefault("max_tokens", self.settings.predict_default_max_tokens)
        messages = build_messages(sig, values, demos)
        started = time.perf_counter()
        spent = Spent()  # every call's, for a failure to carry (an evaluation's usage, an optimization's budget)

        async def ask(msgs: list[dict[str, Any]], n: int = 1) -> LMResult:
            r = await self.lm.chat(msgs, model=model, route="predict", priority_route=priority_route,
                                   response_format=fmt, deadline=deadline, n=n if n > 1 else None, **params)
            spent.add(r)
            if self.settings.log_prompts:
                log.info("predict_io", messages=msgs, completion=r.content,
                         choices=[c.content for c in r.choices[1:]] or None)
            return r

        n = sample_count(module, cfg)
        outcome = "error"
        try:
            if module == "majority" or n > 1:
                prediction = await self._vote(ask, sig, messages, module, n, max_tokens)
            else:
                prediction = await self._once(ask, sig, messages, module, cfg, max_tokens, deadline)
            outcome = "ok"
        except VGateError as exc:
            if isinstance(exc, OutputTruncatedError):
                outcome = "truncated"
            elif isinstance(exc, OutputValidationError):
                outcome = "invalid_output"
            exc.spent = spent  # type: ignore[attr-defined]
            raise
        finally:
            self.metrics.predictions.labels(module=module, outcome=outcome).inc()
        prediction.latency_ms = (time.perf_counter() - started) * 1000
        return prediction

    async def _once(self, ask: Ask, sig: Signature, messages: list[dict[str, Any]], module: Module,
                    cfg: PredictConfig, max_tokens: int, deadline: float) -> Prediction:
        repair = DEFAULT_REPAIR if cfg.repair is None else cfg.repair
        done = await with_repair(ask, sig, messages, repair=repair, deadline=deadline, max_tokens=max_tokens,
                                 metrics=self.metrics)
        outputs = done.outputs
        reasoning = outputs.pop(REASONING_FIELD, None) if module == "chain_of_thought" else None
        return Prediction(
            outputs=outputs,
            reasoning=reasoning,
            usage=done.spent.usage,
            cost_usd=done.spent.cost_usd,
            latency_ms=0.0,
            ttft_ms=done.first.ttft_ms,
            model=done.last.model,
            repairs=done.repairs,
        )

    async def _vote(self, ask: SampleAsk, sig: Signature, messages: list[dict[str, Any]], module: Module, n: int,
                    max_tokens: int) -> Prediction:
        cot = module == "chain_of_thought"
        fields = [f for f in sig.output_names if not (cot and f == REASONING_FIELD)]
        v = await voted(ask, sig, messages, n=n, fields=fields, reasoning=cot, max_tokens=max_tokens,
                        metrics=self.metrics)
        return Prediction(
            outputs=v.vote.outputs,
            reasoning=v.reasoning,
            usage=v.result.usage,
            cost_usd=v.result.cost_usd,
            latency_ms=0.0,
            ttft_ms=v.result.ttft_ms,
            model=v.result.model,
            agreement=v.vote.agreement,
            samples=v.samples,
            valid_samples=v.valid,
        )
