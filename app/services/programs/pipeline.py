"""Running a multi-step program: each step starts as soon as the steps it reads from are done (so
independent steps run in parallel), a mapped step runs once per item concurrently (DSPy's
``Parallel``), and the answer carries the program's outputs, a trace of every step and the usage
and cost summed. A step that fails fails the run with its own error (status, type, details) and
``step`` naming it (``outer/inner`` through a program step; ``item`` for a mapped item); the other
steps still running are cancelled."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.errors import UpstreamError, VGateError
from app.services.lm import Usage
from app.services.programs.config import PredictConfig
from app.services.programs.steps import INPUTS, CompiledStep, Plan
from app.services.signature import REASONING_FIELD

if TYPE_CHECKING:
    from app.services.predict import PredictService
    from app.services.programs.model import Program
    from app.services.programs.registry import ProgramRegistry

# runs a program step's program (ProgramRunner.run, without the overrides a step may not make)
RunProgram = Callable[..., Awaitable[Any]]


class MapTooLarge(UpstreamError):
    """A step's map ran over more items than a batch may have: the list came from a model's output."""

    type = "map_too_large"
    retryable = False

    def __init__(self, message: str, **kw: Any) -> None:
        super().__init__(message, retry_after_s=None, **kw)


@dataclass(slots=True)
class PipelineResult:
    """A multi-step program's answer: the same attributes as a ``Prediction``, plus ``trace``."""

    outputs: dict[str, Any]
    usage: Usage
    cost_usd: float
    latency_ms: float
    model: str
    trace: list[dict[str, Any]] = field(default_factory=list)
    reasoning: str | None = None
    ttft_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The pipeline's result as /predict answers it: outputs, usage, cost, latency and each step's trace."""
        return {
            "outputs": self.outputs,
            "usage": self.usage.as_dict(),
            "cost_usd": self.cost_usd,
            "latency_ms": round(self.latency_ms, 2),
            "ttft_ms": None,
            "model": self.model,
            "trace": self.trace,
        }


@dataclass(slots=True)
class _Done:
    """A finished step: its outputs (lists for a mapped step), its trace entry and its books."""

    outputs: dict[str, Any]
    trace: dict[str, Any]
    usage: Usage
    cost_usd: float
    models: set[str]


def _models_label(models: set[str]) -> str:
    """The model that answered, or the models (sorted, comma-separated) when steps used several."""
    return ",".join(sorted(models))


def _tagged(exc: VGateError, step: str, item: int | None = None) -> VGateError:
    inner = exc.details.get("step")
    exc.details["step"] = f"{step}/{inner}" if inner else step
    if item is not None and "item" not in exc.details:
        exc.details["item"] = item
    return exc


class Pipeline:
    """Runs one multi-step program; the request's overrides (``model``, ``config``) reach every step."""

    def __init__(self, predict: PredictService, run_program: RunProgram,
                 registry: ProgramRegistry | None = None) -> None:
        self.predict = predict
        self.run_program = run_program
        self.registry = registry

    async def run(
        self,
        program: Program,
        inputs: dict[str, Any],
        *,
        model: str | None = None,
        config: PredictConfig | None = None,
        priority_route: str = "predict",
    ) -> PipelineResult:
        """Run a multi-step program's steps in order (mapped steps item by item) and return the outputs with their
        trace."""
        plan: Plan = program.plan()
        started = time.perf_counter()
        values = plan.signature.validate_inputs(inputs)  # a 422 before any step runs
        done: dict[str, _Done] = {}

        async def run_step(cs: CompiledStep) -> _Done:
            return await self._step(cs, values, done, program, model, config, priority_route)

        waiting = list(plan.steps)
        running: dict[asyncio.Task[_Done], CompiledStep] = {}
        try:
            while waiting or running:
                for cs in [cs for cs in waiting if cs.deps <= done.keys()]:
                    waiting.remove(cs)
                    running[asyncio.ensure_future(run_step(cs))] = cs
                finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    cs = running.pop(task)
                    done[cs.name] = task.result()  # a failed step raises here; finally cancels the rest
        except VGateError as exc:  # what the steps that ran spent still counts (an evaluation's usage)
            _spent_with(exc, done.values())
            raise
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)

        usage, cost, models = Usage(), 0.0, set()
        for d in done.values():
            usage.add(d.usage)
            cost += d.cost_usd
            models |= d.models
        outputs = {name: self._value(ref, values, done) for name, ref in plan.outputs}
        return PipelineResult(
            outputs=outputs,
            usage=usage,
            cost_usd=cost,
            latency_ms=(time.perf_counter() - started) * 1000,
            model=_models_label(models),
            trace=[done[cs.name].trace for cs in plan.steps],
        )

    @staticmethod
    def _value(ref: Any, values: dict[str, Any], done: dict[str, _Done]) -> Any:
        return values[ref.field] if ref.source == INPUTS else done[ref.source].outputs[ref.field]

    async def _step(
        self,
        cs: CompiledStep,
        values: dict[str, Any],
        done: dict[str, _Done],
        program: Program,
        model: str | None,
        config: PredictConfig | None,
        priority_route: str,
    ) -> _Done:
        step = cs.step
        bound = {f: self._value(ref, values, done) for f, ref in cs.bindings}
        target = self._target(cs)
        # the request's model, the step's, a program step's program's own, then this program's
        call_model = model or step.model or (target.model if target is not None else None) or program.model
        # a signature step: the program's config, the step's, the request's; a program step: that program's
        # own (ProgramRunner merges it), the step's, the request's
        call_config = step.config.merged(config)
        if cs.program is None:
            call_config = program.config.merged(call_config)
        head: dict[str, Any] = {"name": step.name} if target is None else {"name": step.name, "program": target.ref}
        if step.map is None:
            try:
                result = await self._call(cs, target, bound, call_model, call_config, priority_route)
            except VGateError as exc:
                raise _tagged(exc, step.name) from None
            return _Done(_outputs_of(cs, result), {**head, "inputs": bound, **result.as_dict()},
                         result.usage, result.cost_usd, set(result.model.split(",")))

        items = bound[step.map]
        limit = self.predict.settings.max_batch_size
        if len(items) > limit:
            raise MapTooLarge(f"step {step.name!r} maps over {len(items)} items of {step.map!r}; the limit is "
                              f"{limit} (max_batch_size)", step=step.name, items=len(items), limit=limit)
        started = time.perf_counter()

        async def one(i: int, item: Any) -> Any:
            try:
                return await self._call(cs, target, {**bound, step.map: item}, call_model, call_config,
                                        priority_route)
            except VGateError as exc:
                raise _tagged(exc, step.name, i) from None

        try:
            async with asyncio.TaskGroup() as group:  # the first failure cancels the other items
                tasks = [group.create_task(one(i, item)) for i, item in enumerate(items)]
        except BaseExceptionGroup as eg:
            raise _first(eg) from None
        results = [t.result() for t in tasks]
        usage, cost, models = Usage(), 0.0, set()
        for r in results:
            usage.add(r.usage)
            cost += r.cost_usd
            models |= set(r.model.split(","))
        each = [_outputs_of(cs, r) for r in results]
        outputs = {name: [o[name] for o in each] for name in cs.outputs}
        trace = {
            **head,
            "map": step.map,
            "inputs": bound,
            "outputs": outputs,
            "usage": usage.as_dict(),
            "cost_usd": cost,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            "model": _models_label(models) if models else None,
            "items": [{"index": i, "inputs": {**bound, step.map: item}, **r.as_dict()}
                      for i, (item, r) in enumerate(zip(items, results, strict=True))],
        }
        return _Done(outputs, trace, usage, cost, models)

    def _target(self, cs: CompiledStep) -> Program | None:
        """The program a program step runs: for ``"qa"``, the newest version now (one an optimization
        saved since the start, when its fields are the ones checked at load); ``"qa@2"`` stays pinned."""
        bound = cs.program
        if bound is None or self.registry is None or "@" in (cs.step.program or ""):
            return bound
        newest = self.registry.get(bound.name)
        if newest is None or newest is bound or newest.parsed() != bound.parsed():
            return bound
        return newest

    async def _call(self, cs: CompiledStep, target: Program | None, inputs: dict[str, Any], model: str | None,
                    config: PredictConfig, priority_route: str) -> Any:
        if target is not None:
            return await self.run_program(target, inputs, model=model, config=config, priority_route=priority_route)
        step = cs.step
        result = await self.predict.predict(cs.signature, inputs, module=step.module, demos=step.demos or None,
                                            model=model, config=config, priority_route=priority_route)
        return result


def _outputs_of(cs: CompiledStep, result: Any) -> dict[str, Any]:
    """A step's outputs as references see them: a chain of thought's ``reasoning`` among them."""
    if REASONING_FIELD in cs.outputs and REASONING_FIELD not in result.outputs:
        return {**result.outputs, REASONING_FIELD: result.reasoning}
    return result.outputs


def _spent_with(exc: VGateError, steps: Any) -> None:
    """Add the finished steps' usage and cost to what the failed step's error says it spent."""
    from app.services.predict.repair import Spent

    spent = getattr(exc, "spent", None) or Spent()
    for d in steps:
        spent.usage.add(d.usage)
        spent.cost_usd += d.cost_usd
    exc.spent = spent  # type: ignore[attr-defined]


def _first(eg: BaseExceptionGroup) -> BaseException:
    """The exception a task group's failure stands for: the first that is not a cancellation."""
    for exc in eg.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return eg.exceptions[0]
