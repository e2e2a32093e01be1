"""Which upstream a call goes to, among those that may take it now.

- **Prefix affinity**: a call whose prefix (``affinity`` key: a signature's instructions and demos,
  an agent's system prompt and tools, a chat's first turns, or the client's session header) was seen
  before goes back to the upstream that served it — vLLM's prefix cache makes the repeated prefix
  nearly free there — while that upstream can take it and is not far busier than the least busy
  (``_overloaded``). The keys live in an LRU of bounded size; an entry moves only when its upstream
  can no longer serve the model at all (down, or not serving it).
- **Load**: otherwise the power of two choices — two upstreams drawn at random (weighted), the less
  loaded wins (``Upstream.load``: requests per unit of weight). With stale information (scrapes are a
  second old) two random choices avoid the herd that "always the least loaded" causes.
- ``round_robin`` and ``random`` exist to measure the above against (``benchmarks/routing.py``).
"""

from __future__ import annotations

import itertools
import random
from collections import OrderedDict
from collections.abc import Sequence

from app.services.upstreams.upstream import Upstream

AFFINITY_SLACK = 8  # requests (per unit of weight) a prefix's upstream may carry beyond twice the least loaded


class Chooser:
    """Picks an upstream for a call: prefix affinity first, then the routing policy (power of two choices on load)."""
    def __init__(self, policy: str, affinity_entries: int, *, rng: random.Random | None = None) -> None:
        self.policy = policy
        self.affinity_entries = affinity_entries
        self._affinity: OrderedDict[int, Upstream] = OrderedDict()
        self._rr = itertools.count()
        self._rng = rng or random.Random()

    def pick(self, eligible: Sequence[Upstream], affinity: int | None, serving: Sequence[Upstream]) -> tuple[
            Upstream, str]:
        """One of ``eligible`` (non-empty: upstreams with a free slot, not saturated), and why:
        ``affinity`` or the policy's name. ``serving``: every upstream that serves the model and is up."""
        if affinity is not None and self.affinity_entries:
            home = self._affinity.get(affinity)
            if home is not None:
                self._affinity.move_to_end(affinity)
                if home in eligible and not self._overloaded(home, eligible):
                    return home, "affinity"
                if home in serving:  # busy now: this call goes elsewhere, the prefix stays at home
                    return self._by_policy(eligible), "spill"
            chosen = self._by_policy(eligible)
            self._affinity[affinity] = chosen
            self._affinity.move_to_end(affinity)
            if len(self._affinity) > self.affinity_entries:
                self._affinity.popitem(last=False)
            return chosen, self.policy
        return self._by_policy(eligible), self.policy

    @staticmethod
    def _overloaded(home: Upstream, eligible: Sequence[Upstream]) -> bool:
        """Far busier than the least busy upstream: twice its load and ``AFFINITY_SLACK`` more. A cached
        prefix saves a prefill; a queue twice as long costs more than that (one shared system prompt
        would otherwise put every call on one upstream while the others idle)."""
        least = min(u.load() for u in eligible)
        return home.load() >= 2 * least + AFFINITY_SLACK

    def _by_policy(self, eligible: Sequence[Upstream]) -> Upstream:
        if len(eligible) == 1:
            return eligible[0]
        if self.policy == "round_robin":
            return eligible[next(self._rr) % len(eligible)]
        if self.policy == "random":
            return self._rng.choices(eligible, weights=[u.weight for u in eligible])[0]
        a, b = self._two(eligible)
        la, lb = a.load(), b.load()
        if la == lb:
            return a if self._rng.random() < 0.5 else b
        return a if la < lb else b

    def _two(self, eligible: Sequence[Upstream]) -> tuple[Upstream, Upstream]:
        if len(eligible) == 2:
            return eligible[0], eligible[1]
        weights = [u.weight for u in eligible]
        a = self._rng.choices(eligible, weights=weights)[0]
        rest = [u for u in eligible if u is not a]
        b = self._rng.choices(rest, weights=[u.weight for u in rest])[0]
        return a, b
