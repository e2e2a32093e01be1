"""Limits, reservations and usage in this process's memory: the embedded default (one process).

The same rules as the Redis scripts (``redis_store.py``), step for step; both run the same tests.
Each method runs without awaiting in between, so on one event loop it is atomic.

Money is kept as what was spent (settled calls) plus what live reservations hold; a reservation
that is never settled (its replica died) simply lapses after its hold, so nothing has to be given
back and nothing can be given back twice.
"""

from __future__ import annotations

import time
from collections import OrderedDict, defaultdict, deque
from dataclasses import dataclass, field

from app.services.limits.model import WINDOW_S, Limits, Periods, Verdict


@dataclass
class _Key:
    requests: deque = field(default_factory=deque)  # (ts, lease) admitted in the window
    live: dict = field(default_factory=dict)  # lease -> expiry
    tokens: OrderedDict = field(default_factory=OrderedDict)  # res -> [ts, tokens] in the window
    tokens_used: int = 0  # their sum
    reservations: dict = field(default_factory=dict)  # res -> (expiry, cost)
    reserved: float = 0.0  # their sum, USD


class MemoryLimitStore:
    """Keys' limits, reservations and usage in this process's memory (no Redis: one process only)."""
    def __init__(self) -> None:
        self._keys: dict[str, _Key] = defaultdict(_Key)
        self._spend: dict[tuple[str, str], float] = defaultdict(float)  # (key, "d:2026-12-02" | "m:2026-12")
        self._usage: dict[tuple[str, str, str], list] = {}  # (day, key, model) -> [requests, prompt, completion, $]

    async def admit(self, key: str, limits: Limits, lease: str, lease_s: float, periods: Periods) -> Verdict:
        """Admit a request of the key (rpm, max_concurrent, budgets) and take a concurrency lease, or say which limit
        refuses."""
        now = time.time()
        k = self._prune(key, now)
        v = self._state(key, k, periods)
        if limits.max_concurrent is not None and len(k.live) >= limits.max_concurrent:
            v.limit, v.retry_after_s = "max_concurrent", 1.0
        elif limits.rpm is not None and len(k.requests) >= limits.rpm:
            v.limit, v.retry_after_s = "rpm", k.requests[0][0] + WINDOW_S - now
        elif limits.tpm is not None and v.tokens_used >= limits.tpm:
            v.limit, v.retry_after_s = "tpm", _tokens_free_in(k, limits.tpm, 0, now)
        elif limits.budget_usd_daily is not None and v.spent_day >= limits.budget_usd_daily:
            v.limit, v.retry_after_s = "budget_usd_daily", periods.day_reset_s
        elif limits.budget_usd_monthly is not None and v.spent_month >= limits.budget_usd_monthly:
            v.limit, v.retry_after_s = "budget_usd_monthly", periods.month_reset_s
        if limits.rpm is not None and v.ok:
            k.requests.append((now, lease))
        v.requests_used = len(k.requests)
        v.requests_reset_s = k.requests[0][0] + WINDOW_S - now if k.requests else 0.0
        if v.ok and limits.max_concurrent is not None:
            k.live[lease] = now + lease_s
        return v

    async def leave(self, key: str, lease: str) -> None:
        """Give back a request's concurrency lease."""
        self.leave_soon(key, lease)

    def leave_soon(self, key: str, lease: str) -> None:
        """Give back a request's concurrency lease at once, without awaiting."""
        k = self._keys.get(key)
        if k is not None:
            k.live.pop(lease, None)

    async def reserve(self, key: str, limits: Limits, res: str, tokens: int, cost: float, hold_s: float,
                      periods: Periods) -> Verdict:
        """Reserve a call's estimated tokens and cost against tpm and the budgets, or say which limit refuses."""
        now = time.time()
        k = self._prune(key, now)
        v = self._state(key, k, periods)
        if limits.tpm is not None and v.tokens_used > 0 and v.tokens_used + tokens > limits.tpm:
            v.limit, v.retry_after_s = "tpm", _tokens_free_in(k, limits.tpm, tokens, now)
        elif limits.budget_usd_daily is not None and v.spent_day + cost > limits.budget_usd_daily:
            v.limit, v.retry_after_s = "budget_usd_daily", periods.day_reset_s
        elif limits.budget_usd_monthly is not None and v.spent_month + cost > limits.budget_usd_monthly:
            v.limit, v.retry_after_s = "budget_usd_monthly", periods.month_reset_s
        if not v.ok:
            return v
        if limits.tpm is not None:
            k.tokens[res] = [now, tokens]
            k.tokens_used += tokens
            v.tokens_used += tokens
        k.reservations[res] = (now + hold_s, cost)
        k.reserved += cost
        v.spent_day += cost
        v.spent_month += cost
        return v

    async def settle(self, key: str, res: str | None, model: str, prompt: int, completion: int, cost: float,
                     count_tokens: bool, served: bool, periods: Periods) -> None:
        """Replace a call's reservation with its real usage, and add it to the usage report."""
        self.record(key, res, model, prompt, completion, cost, count_tokens, served, periods)

    async def drain(self) -> None:
        """Every settlement recorded has reached the store (here: at once)."""

    def record(self, key: str, res: str | None, model: str, prompt: int, completion: int, cost: float,
               count_tokens: bool, served: bool, periods: Periods) -> None:
        """The call's real usage is spent and its reservation (if it still holds one) released; a call
        the upstream ``served`` is recorded in the usage report."""
        now = time.time()
        k = self._prune(key, now)
        held = k.reservations.pop(res, None) if res is not None else None
        if held is not None:
            k.reserved = k.reserved - held[1] if k.reservations else 0.0
        self._spend[key, "d:" + periods.day] += cost
        self._spend[key, "m:" + periods.month] += cost
        used = prompt + completion
        entry = k.tokens.get(res) if res is not None else None
        if entry is not None:
            k.tokens_used += used - entry[1]
            entry[1] = used
        elif count_tokens and used:
            k.tokens[res or f"u{now}"] = [now, used]
            k.tokens_used += used
        if served:
            row = self._usage.setdefault((periods.day, key, model), [0, 0, 0, 0.0])
            row[0] += 1
            row[1] += prompt
            row[2] += completion
            row[3] += cost

    async def usage(self, since: str, until: str, key: str | None, model: str | None) -> list[dict]:
        """Usage rows by UTC day, key and model, filtered by the range, key and model given."""
        rows = []
        for (day, k, m), (n, p, c, usd) in sorted(self._usage.items()):
            if since <= day <= until and (key is None or k == key) and (model is None or m == model):
                rows.append({"day": day, "key": k, "model": m, "requests": n, "prompt_tokens": p,
                             "completion_tokens": c, "cost_usd": usd})
        return rows

    async def ping(self) -> bool:
        """Always reachable."""
        return True

    # ------------------------------------------------------------------ inside

    def _prune(self, key: str, now: float) -> _Key:
        k = self._keys[key]
        if k.reservations:
            for res in [r for r, held in k.reservations.items() if held[0] <= now]:  # never settled: lapses
                k.reserved -= k.reservations.pop(res)[1]
            if not k.reservations:
                k.reserved = 0.0
        while k.requests and k.requests[0][0] <= now - WINDOW_S:
            k.requests.popleft()
        for lease in [lease for lease, exp in k.live.items() if exp <= now]:
            del k.live[lease]
        while k.tokens:
            res, (ts, used) = next(iter(k.tokens.items()))
            if ts > now - WINDOW_S:
                break
            del k.tokens[res]
            k.tokens_used -= used
        if not k.tokens:
            k.tokens_used = 0
        return k

    def _state(self, key: str, k: _Key, periods: Periods) -> Verdict:
        reserved = max(0.0, k.reserved)
        return Verdict(requests_used=len(k.requests), tokens_used=k.tokens_used,
                       spent_day=self._spend.get((key, "d:" + periods.day), 0.0) + reserved,
                       spent_month=self._spend.get((key, "m:" + periods.month), 0.0) + reserved)


def _tokens_free_in(k: _Key, tpm: int, tokens: int, now: float) -> float:
    """Until enough of the window's tokens leave it for ``tokens`` more to fit (or, for 0, to be under)."""
    used = k.tokens_used
    for ts, t in k.tokens.values():
        used -= t
        if used == 0 or used + tokens <= tpm and (tokens or used < tpm):
            return ts + WINDOW_S - now
    return WINDOW_S
