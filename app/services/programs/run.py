"""Running a program on one input: its signature, module, demos, model and config, each of which a
request may override; or a multi-step program's steps (``pipeline.py``), where only ``model`` and
``config`` may be overridden. Evaluation and optimization run programs through here, as /predict does."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import structlog

from app.errors import InvalidRequestError, VGateError
from app.services.programs.config import Module, PredictConfig
from app.services.programs.model import Program
from app.services.programs.pipeline import Pipeline, PipelineResult

if TYPE_CHECKING:
    from app.services.predict import BatchResult, Prediction, PredictService
    from app.services.programs.registry import ProgramRegistry

log = structlog.get_logger("vgate.programs")


def refuse_step_overrides(program: Program, **overrides: Any) -> None:
    """A multi-step program's module, demos and instructions are its steps': a 422 for overriding them."""
    given = [k for k, v in overrides.items() if v is not None]
    if program.steps is not None and given:
        raise InvalidRequestError(
            f"program {program.ref!r} has steps: {', '.join(given)} cannot be overridden for it (each step has "
            "its own); only 'model' and 'config' apply to every step", type="invalid_request", fields=given)


class ProgramRunner:
    """Runs programs, single-signature or multi-step, through the predict service."""
    def __init__(self, predict: PredictService, registry: ProgramRegistry | None = None) -> None:
        """``registry``: where a multi-step program's step finds the newest version of the program it
        runs (without it, the version bound at load)."""
        self.predict = predict
        self.pipeline = Pipeline(predict, self.run, registry)

    async def run(
        self,
        program: Program,
        inputs: dict[str, Any],
        *,
        module: Module | None = None,
        demos: list[dict[str, Any]] | None = None,
        model: str | None = None,
        config: PredictConfig | None = None,
        instructions: str | None = None,
        priority_route: str = "predict",
    ) -> Prediction | PipelineResult:
        """Run a program on one example and return its result (a multi-step one with its trace)."""
        if program.steps is not None:
            refuse_step_overrides(program, module=module, demos=demos, instructions=instructions)
            return await self.pipeline.run(program, inputs, model=model, config=config,
                                           priority_route=priority_route)
        signature = program.parsed()
        if instructions:
            signature = signature.with_instructions(instructions)
        return await self.predict.predict(
            signature,
            inputs,
            module=module or program.module,
            demos=demos if demos is not None else (program.demos or None),
            model=model or program.model,
            config=program.config.merged(config),
            priority_route=priority_route,
        )

    async def run_batch(
        self,
        program: Program,
        batch: list[dict[str, Any]],
        *,
        model: str | None = None,
        config: PredictConfig | None = None,
    ) -> BatchResult:
        """A multi-step program over a batch: every item runs the whole program at once, at the
        ``predict_batch`` route's priority; each item succeeds or fails on its own. The batch is
        refused whole (a 429) when the upstreams cannot take its first wave now."""
        from app.services.predict import BatchResult

        await self.predict.lm.admit_batch(model or program.model, len(batch), "predict_batch")
        started = time.perf_counter()

        async def one(i: int, inputs: dict[str, Any]) -> PipelineResult | VGateError:
            try:
                return await self.pipeline.run(program, inputs, model=model, config=config,
                                               priority_route="predict_batch")
            except VGateError as exc:
                return exc
            except Exception:  # a bug must fail this item, not the batch
                log.exception("batch_item_crashed", index=i, program=program.ref)
                return VGateError("internal error on this item; the request id is in the logs")

        items = await asyncio.gather(*(one(i, x) for i, x in enumerate(batch)))
        result = BatchResult(items=list(items), latency_ms=(time.perf_counter() - started) * 1000)  # type: ignore[arg-type]
        for item in items:
            if not isinstance(item, VGateError):
                result.usage.add(item.usage)
                result.cost_usd += item.cost_usd
        return result
