"""/optimize's work: check and admit the request (``plan``), then bootstrap demos, score them on
the valset, and save the result as the program's next version (``optimize``).

* ``bootstrap_few_shot``: the base program scored on the valset (``score_before``); the train set
  run (by the teacher model when one is given) until ``k`` examples pass the metric (score >=
  ``threshold``, default 1: every scored field right); those demos scored on the valset
  (``score_after``).
* ``bootstrap_random_search``: every passing train example bootstrapped into a pool; ``candidates``
  demo sets drawn from it (its first ``k``, then seeded samples), the zero-shot program, and the
  base's own demos (when it has some: its score is ``score_before``), each scored on the valset; the
  best is kept (ties: the earliest in that order), and its score is ``score_after``.

Multi-step programs are refused (422): their steps have demos of their own.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from app.errors import InvalidRequestError
from app.services.evaluation import Example, ExampleResult, Metric, Report, Run, evaluate
from app.services.evaluation.service import admit, prepare, program_ref
from app.services.lm import LMClient
from app.services.optimize.bootstrap import bootstrap, candidate_sets
from app.services.optimize.budget import Budget
from app.services.programs import PredictConfig, ProgramRegistry, ProgramRunner
from app.settings import Settings

Strategy = Literal["bootstrap_few_shot", "bootstrap_random_search"]
Advance = Callable[..., Awaitable[None]]


@dataclass
class Options:
    """An optimization's settings: strategy, demos at most, the pass threshold, candidates, seed, teacher and
    budgets."""
    strategy: Strategy
    k: int = 4
    threshold: float = 1.0
    candidates: int = 4
    seed: int = 0
    teacher_model: str | None = None
    max_calls: int | None = None
    max_cost_usd: float | None = None
    model: str | None = None  # overrides for every run; part of the new version (they are what was scored)
    config: PredictConfig | None = None


@dataclass
class Plan:
    """A checked optimization, ready to run: the program as scored and as teacher, the metric, the sets, the budget."""
    run: Run  # the program as it is scored
    teacher: Run  # the program as it bootstraps (the teacher model, when given)
    metric: Metric
    trainset: list[Example]
    valset: list[Example]
    options: Options

    @property
    def chunk(self) -> int:
        """Bootstrap runs this many examples at once: few-shot stops at ``k`` demos, and a cost budget
        is checked between chunks; random search without one runs the whole train set at once."""
        if self.options.strategy == "bootstrap_random_search" and self.options.max_cost_usd is None:
            return max(1, len(self.trainset))
        return max(2 * self.options.k, 8)

    @property
    def total_calls(self) -> int:
        """The most calls the plan can make (a job's progress counts to it)."""
        scorings = 2 if self.options.strategy == "bootstrap_few_shot" else self.options.candidates + 2
        total = len(self.trainset) + scorings * len(self.valset)
        return min(total, self.options.max_calls) if self.options.max_calls is not None else total


async def plan(runner: ProgramRunner, lm: LMClient, programs: ProgramRegistry, settings: Settings, *,
               program: str, version: int | None, trainset: list[Example], valset: list[Example],
               metric: Any, options: Options) -> Plan:
    """Everything checked before any call: the program (single-step), the metric, both datasets,
    the budget (enough calls to score the valset before and after), the models (admitted)."""
    base = await programs.find(program, version)  # with versions another replica saved
    if getattr(base, "steps", None):
        raise InvalidRequestError(f"program {base.name!r} has steps: /optimize supports single-step programs only "
                                  "(optimize each step as a program of its own)", type="unsupported_program")
    run = Run(base, model=options.model, config=options.config, priority_route="optimize")
    compiled = prepare(run, trainset, metric, settings, name="trainset")
    prepare(run, valset, metric, settings, name="valset")
    minimum = 2 * len(valset) + 1
    if options.max_calls is not None and options.max_calls < minimum:
        raise InvalidRequestError(
            f"max_calls={options.max_calls} cannot score the valset before and after ({len(valset)} calls each) "
            f"and bootstrap one example: at least {minimum}", type="budget_too_small", minimum=minimum)
    await admit(lm, run, len(valset))
    teacher = Run(base, model=run.model, config=options.config, priority_route="optimize")
    if options.teacher_model is not None:
        teacher.model = options.teacher_model
        await admit(lm, teacher, min(len(trainset), max(2 * options.k, 8)))
    return Plan(run, teacher, compiled, trainset, valset, options)


async def optimize(runner: ProgramRunner, programs: ProgramRegistry, p: Plan,
                   advance: Advance | None = None) -> dict[str, Any]:
    """Run the plan; the result is saved as the program's next version. ``advance`` (a job's
    ``Progress.advance``) hears of every call."""
    o = p.options
    budget = Budget(o.max_calls, o.max_cost_usd)
    started = time.perf_counter()
    phase = "score_before"

    async def on_call(result: ExampleResult) -> None:
        if advance is not None:
            await advance(1, phase=phase, calls=budget.calls, cost_usd=round(budget.cost_usd, 10))

    async def score(run: Run) -> Report:
        async def counted(result: ExampleResult) -> None:
            budget.record(result)
            await on_call(result)

        return await evaluate(runner, run, p.valset, p.metric, on_result=counted)

    base_demos = list(p.run.program.demos)
    before = await score(p.run)
    phase = "bootstrap"
    few_shot = o.strategy == "bootstrap_few_shot"
    pool, tried = await bootstrap(runner, p.teacher, p.trainset, p.metric, threshold=o.threshold,
                                  want=o.k if few_shot else None, budget=budget, reserve=len(p.valset),
                                  chunk=p.chunk, on_call=on_call)
    phase = "score_after" if few_shot else "candidates"
    scored: list[dict[str, Any]] = []
    if few_shot:
        demos = pool
        after = before.score if demos == base_demos else (await score(p.run.with_demos(demos))).score
    else:
        sets = [("bootstrapped", d) for d in candidate_sets(pool, o.k, o.candidates, o.seed)]
        sets.append(("zero_shot", []))
        if base_demos:
            sets.append(("base", base_demos))
        for kind, candidate in sets:
            if candidate == base_demos:
                value = before.score  # the base as it was scored: no calls
            elif budget.affords(len(p.valset)):
                value = (await score(p.run.with_demos(candidate))).score
            else:
                budget.exhausted = True
                continue
            scored.append({"kind": kind, "demos": candidate, "score": value})
        best = max(scored, key=lambda c: c["score"])  # the first of the best; "base" or "zero_shot" is always there
        demos, after = best["demos"], best["score"]

    result: dict[str, Any] = {
        "strategy": o.strategy, "base": program_ref(p.run.program), "demos": demos,
        "score_before": before.score, "score_after": after, "usage": budget.usage.as_dict(),
        "cost_usd": round(budget.cost_usd, 10), "calls": budget.calls, "budget_exhausted": budget.exhausted,
        "bootstrapped": len(pool), "trainset_run": tried, "metric": p.metric.describe(), "model": p.run.model,
        "teacher_model": o.teacher_model, "latency_ms": round((time.perf_counter() - started) * 1000, 2),
    }
    if not few_shot:
        result["candidates"] = scored
    provenance = {
        "strategy": o.strategy, "metric": result["metric"], "base_version": p.run.program.version,
        "trainset": len(p.trainset), "valset": len(p.valset), "k": o.k, "threshold": o.threshold,
        "teacher_model": o.teacher_model, "model": p.run.model, "usage": result["usage"],
        "cost_usd": result["cost_usd"], "calls": budget.calls, "budget_exhausted": budget.exhausted,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if not few_shot:
        provenance.update(candidates=len(scored), seed=o.seed)
    target = p.run.program
    if o.model is not None or o.config is not None:  # the version is what was scored
        target = target.model_copy(update={"model": o.model or target.model,
                                           "config": target.config.merged(o.config)})
    saved = await programs.save_version(target, demos=demos, score_before=before.score, score_after=after,
                                        provenance=provenance)
    return {"program": program_ref(saved), "version": saved.version, **result}
