"""Bootstrapping demos, as DSPy's BootstrapFewShot does: run the program (or its teacher) on the
train set and keep, as demos, the examples whose outputs pass the metric — each demo is the
example's inputs with the outputs the teacher gave. And the candidate demo sets random search
scores."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from app.services.evaluation import Example, ExampleResult, Metric, Run, run_example
from app.services.optimize.budget import Budget
from app.services.programs import ProgramRunner

OnCall = Callable[[ExampleResult], Awaitable[None]]


def passes(result: ExampleResult, threshold: float) -> bool:
    """Whether a teacher's run succeeded and scored at least the threshold (it may become a demo)."""
    return result.error is None and result.prediction is not None and result.score >= threshold


def as_demo(result: ExampleResult) -> dict[str, Any]:
    """A passing result as a demo: its inputs and the teacher's outputs."""
    assert result.prediction is not None
    return {**result.inputs, **result.prediction}


async def bootstrap(runner: ProgramRunner, teacher: Run, trainset: Sequence[Example], metric: Metric, *,
                    threshold: float, want: int | None, budget: Budget, reserve: int, chunk: int,
                    on_call: OnCall) -> tuple[list[dict[str, Any]], int]:
    """Demos from the train set, in its order: up to ``want`` (None: every passing example), in
    chunks of ``chunk`` concurrent runs, while the budget leaves ``reserve`` calls. Returns the
    demos and how many examples were run."""
    demos: list[dict[str, Any]] = []
    start = 0
    while start < len(trainset) and (want is None or len(demos) < want):
        room = budget.room(reserve)
        if room == 0:
            budget.exhausted = True
            break
        size = chunk if room is None else min(chunk, room)
        batch = trainset[start:start + size]
        results = await asyncio.gather(*(run_example(runner, teacher, start + i, x, metric)
                                         for i, x in enumerate(batch)))
        for r in results:
            budget.record(r)
            await on_call(r)
            if passes(r, threshold):
                demos.append(as_demo(r))
        start += len(batch)
    return (demos if want is None else demos[:want]), start


def candidate_sets(pool: list[dict[str, Any]], k: int, count: int, seed: int) -> list[list[dict[str, Any]]]:
    """Up to ``count`` distinct demo sets of at most ``k`` from the bootstrapped ``pool``: its first
    ``k`` (as bootstrap_few_shot would choose), then seeded random samples (order included: the order
    of demos is part of the prompt). Fewer when a small pool has fewer; none when it is empty."""
    if not pool or count < 1:
        return []
    sets = [pool[:k]]
    rng = random.Random(seed)
    for _ in range(count * 10):
        if len(sets) == count:
            break
        sample = rng.sample(pool, min(k, len(pool)))
        if sample not in sets:
            sets.append(sample)
    return sets
