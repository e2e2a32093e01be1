"""Run a program on a dataset and score it.

Every example runs through ``ProgramRunner.run`` at once (the upstreams' slots and queue bound how
many are in flight; the whole dataset is admitted first, so an evaluation the upstreams cannot take
is one clean 429). Scores:

* an example's ``scores``: each scored field's metric value in [0, 1]; its ``score``: their mean;
* a failed example (the call failed, or the reply did not match the signature) scores 0 on every
  field it would have been scored on, and counts in ``failed``;
* the overall ``score``: the mean over examples of the example's score (every example weighs the
  same, whatever its number of fields);
* ``scores`` per field: the mean of that field's score over the examples that score it.

Usage and cost are summed over the calls; ``latency_ms`` is the evaluation's wall-clock time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from pydantic_core import to_jsonable_python

from app.errors import VGateError
from app.services.evaluation.dataset import Example
from app.services.evaluation.spec import Metric
from app.services.lm import Usage
from app.services.programs import Module, PredictConfig, Program, ProgramRunner

log = structlog.get_logger("vgate.evaluate")


@dataclass(slots=True)
class Run:
    """What to run: a program and the request's overrides of it (``demos`` None: the program's)."""

    program: Program
    model: str | None = None
    config: PredictConfig | None = None
    module: Module | None = None
    demos: list[dict[str, Any]] | None = None
    instructions: str | None = None
    priority_route: str = "evaluate"
    named: bool = True  # a program of the registry (False: an inline signature)

    def with_demos(self, demos: list[dict[str, Any]] | None, model: str | None = None) -> Run:
        """The same run with other demos (and optionally another model)."""
        return Run(self.program, model or self.model, self.config, self.module, demos, self.instructions,
                   self.priority_route, self.named)

    @property
    def effective_demos(self) -> list[dict[str, Any]]:
        """The demos the run uses: its own, else the program's."""
        return self.demos if self.demos is not None else list(self.program.demos)


@dataclass(slots=True)
class ExampleResult:
    """One example's outcome: the prediction (or error), the expected outputs, the field scores, usage and cost."""
    index: int
    inputs: dict[str, Any]
    expected: dict[str, Any]
    prediction: dict[str, Any] | None
    scores: dict[str, float]
    error: dict[str, Any] | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0

    @property
    def score(self) -> float:
        """The mean of the field scores (0 for a failed example)."""
        return sum(self.scores.values()) / len(self.scores) if self.scores else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The example's result as the API answers it."""
        d: dict[str, Any] = {"index": self.index, "inputs": self.inputs, "prediction": self.prediction,
                             "expected": self.expected, "score": self.score, "scores": self.scores}
        if self.error is not None:
            d["error"] = self.error
        return d


@dataclass(slots=True)
class Report:
    """An evaluation's results with their total usage, cost and wall time."""
    results: list[ExampleResult]
    latency_ms: float
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0

    def __post_init__(self) -> None:
        for r in self.results:
            self.usage.add(r.usage)
            self.cost_usd += r.cost_usd

    @property
    def score(self) -> float:
        """The mean over examples of each example's score."""
        return sum(r.score for r in self.results) / len(self.results) if self.results else 0.0

    @property
    def failed(self) -> int:
        """How many examples failed."""
        return sum(r.error is not None for r in self.results)

    def field_scores(self) -> dict[str, float]:
        """Per output field, the mean score over the examples that score it."""
        totals: dict[str, list[float]] = {}
        for r in self.results:
            for name, value in r.scores.items():
                totals.setdefault(name, []).append(value)
        return {name: sum(v) / len(v) for name, v in totals.items()}

    def as_dict(self) -> dict[str, Any]:
        """The report as POST /evaluate answers it."""
        return {"score": self.score, "scores": self.field_scores(), "results": [r.as_dict() for r in self.results],
                "count": len(self.results), "failed": self.failed, "usage": self.usage.as_dict(),
                "cost_usd": round(self.cost_usd, 10), "latency_ms": round(self.latency_ms, 2)}


def error_body(exc: VGateError) -> dict[str, Any]:
    """An error's JSON object with its HTTP status, for a failed example."""
    return {**exc.body(), "status": exc.status_code}


async def run_example(runner: ProgramRunner, run: Run, index: int, example: Example, metric: Metric) -> ExampleResult:
    """One example run and scored; a failure is a result with its error (scores 0), never raised."""
    fields = metric.for_example(example.outputs)
    result = ExampleResult(index, example.inputs, example.outputs, None, {name: 0.0 for name in fields})
    try:
        prediction = await runner.run(run.program, example.inputs, module=run.module, demos=run.demos,
                                      model=run.model, config=run.config, instructions=run.instructions,
                                      priority_route=run.priority_route)
    except VGateError as exc:
        result.error = error_body(exc)
        spent = getattr(exc, "spent", None)  # the calls a failed prediction made still cost
        if spent is not None:
            result.usage.add(spent.usage)
            result.cost_usd = spent.cost_usd
        return result
    except Exception:  # a bug fails this example, not the evaluation
        log.exception("evaluate_example_crashed", index=index)
        result.error = {"type": "internal_error", "message": "internal error on this example; the request id "
                        "is in the logs", "status": 500}
        return result
    result.prediction = to_jsonable_python(prediction.outputs)
    result.usage.add(prediction.usage)
    result.cost_usd = prediction.cost_usd
    result.scores = {name: m.score(result.prediction.get(name), example.outputs[name]) for name, m in fields.items()}
    return result


OnResult = Callable[[ExampleResult], Awaitable[None]]


async def evaluate(runner: ProgramRunner, run: Run, examples: Sequence[Example], metric: Metric,
                   on_result: OnResult | None = None) -> Report:
    """Every example at once; ``on_result`` hears of each as it finishes (a job's progress)."""
    started = time.perf_counter()

    async def one(i: int, example: Example) -> ExampleResult:
        result = await run_example(runner, run, i, example, metric)
        if on_result is not None:
            await on_result(result)
        return result

    results = await asyncio.gather(*(one(i, x) for i, x in enumerate(examples)))
    return Report(list(results), (time.perf_counter() - started) * 1000)
