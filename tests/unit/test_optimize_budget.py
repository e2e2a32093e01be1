"""The optimization budget and random search's candidate demo sets."""

from __future__ import annotations

from app.services.evaluation import ExampleResult
from app.services.lm import Usage
from app.services.optimize import Budget
from app.services.optimize.bootstrap import candidate_sets


def _result(cost: float) -> ExampleResult:
    return ExampleResult(0, {}, {}, {}, {}, usage=Usage(3, 2), cost_usd=cost)


def test_the_call_budget_keeps_its_reserve():
    b = Budget(max_calls=10)
    assert b.room() == 10 and b.room(reserve=4) == 6
    for _ in range(6):
        b.record(_result(0.0))
    assert b.room(reserve=4) == 0 and b.affords(4) and not b.affords(5)
    assert b.usage.total_tokens == 30 and b.calls == 6


def test_the_cost_budget_closes_every_room_once_spent():
    b = Budget(max_cost_usd=0.01)
    assert b.room() is None and b.affords(1000)
    b.record(_result(0.006))
    assert b.room() is None
    b.record(_result(0.006))
    assert b.room() == 0 and not b.affords(1)


def test_candidate_sets_are_distinct_seeded_and_start_with_the_first_k():
    pool = [{"x": i} for i in range(6)]
    sets = candidate_sets(pool, 2, 5, seed=1)
    assert sets[0] == pool[:2] and len(sets) == 5
    assert len({tuple(d["x"] for d in s) for s in sets}) == 5 and all(len(s) == 2 for s in sets)
    assert candidate_sets(pool, 2, 5, seed=1) == sets and candidate_sets(pool, 2, 5, seed=2) != sets
    # a pool of one has one set however many are asked for; an empty pool none
    assert candidate_sets(pool[:1], 3, 4, seed=0) == [pool[:1]] and candidate_sets([], 2, 4, seed=0) == []
