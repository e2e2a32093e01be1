"""An optimization's budget: program runs (``max_calls``) and dollars (``max_cost_usd``).

A call is one program run on one example (a repair within it is part of it). The calls of the
scorings an optimization cannot do without (the valset before, and after or for one candidate) are
reserved before bootstrapping starts, so the call budget is never passed and never cuts a scoring in
half. The cost budget is checked before each bootstrap chunk and before each candidate's scoring: a
scoring once started is finished, so the spend can pass ``max_cost_usd`` by what one valset scoring
(or one chunk of bootstrap calls) costs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.services.evaluation import ExampleResult
from app.services.lm import Usage


@dataclass
class Budget:
    """An optimization's spending bound (program runs, USD) and what it has spent."""
    max_calls: int | None = None
    max_cost_usd: float | None = None
    calls: int = 0
    cost_usd: float = 0.0
    usage: Usage = field(default_factory=Usage)
    exhausted: bool = False

    def room(self, reserve: int = 0) -> int | None:
        """How many calls may start now while ``reserve`` stay kept for later (None: no call limit);
        0 once the cost budget is spent."""
        if self.max_cost_usd is not None and self.cost_usd >= self.max_cost_usd:
            return 0
        if self.max_calls is None:
            return None
        return max(0, self.max_calls - self.calls - reserve)

    def affords(self, calls: int, reserve: int = 0) -> bool:
        """Whether ``calls`` more runs fit the budget, keeping ``reserve`` runs back."""
        room = self.room(reserve)
        return room is None or room >= calls

    def record(self, result: ExampleResult) -> None:
        """Count one program run and its usage and cost."""
        self.calls += 1
        self.cost_usd += result.cost_usd
        self.usage.add(result.usage)
