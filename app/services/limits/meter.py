"""Limits and budgets per key, kept atomically in the store (``memory.py`` or ``redis_store.py``).

- A request, when it arrives (``admit``): the key's concurrency, its requests and tokens in the last
  minute, and its budgets not already spent; it holds a concurrency lease until it ends (``leave``).
- Each upstream call, before it goes (``reserve``): its tokens (the prompt's size / 4, plus
  ``max_tokens``) and their cost at the model's price are reserved against tpm and the budgets, so
  concurrent calls see each other's reservations; a call whose reservation would pass a budget is
  refused, so 200 calls at once against a nearly spent budget overspend by at most one call's
  estimate error. After the call (``settle``), stopped, cut short or failed alike, the reservation
  is replaced by the real usage, which is also recorded for /admin/usage.
- The store unreachable: ``limits_fail_open`` lets calls through uncounted, else they get a 503.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
from dataclasses import dataclass

import structlog

from app.services.limits.model import LimitExceeded, Limits, Verdict, periods_now, refusal
from app.services.state.connection import StoreUnavailable

log = structlog.get_logger("vgate.limits")
BYTES_PER_TOKEN = 3
TEMPLATE_TOKENS = 8  # a chat template's role markers per message (Qwen's are 5)


@dataclass(slots=True)
class Admission:
    lease: str | None
    headers: list[tuple[bytes, bytes]]


class Meter:
    def __init__(self, settings, metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = None  # set by the lifespan: MemoryLimitStore or RedisLimitStore
        self.lease_s = max(3600.0, 2 * settings.request_timeout_s)  # a dead replica's leases expire
        self.hold_s = settings.request_timeout_s + 60.0  # ... and its reservations go back
        self._refused: dict[str, object] = {}
        self._children: dict[tuple[str, str], tuple] = {}

    # ------------------------------------------------------------ requests

    async def admit(self, principal) -> Admission | None:
        """The request's admission (its lease and rate headers), or a 429 naming the limit."""
        limits: Limits = principal.limits
        if not limits.per_request:
            return None
        periods = periods_now()
        lease = _new_id()
        try:
            verdict = await self.store.admit(principal.id, limits, lease, self.lease_s, periods)
        except StoreUnavailable:
            if self.settings.limits_fail_open:
                return None
            raise
        if not verdict.ok:
            self._count_refusal(verdict.limit)
            raise refusal(principal.id, limits, verdict, periods)
        return Admission(lease if limits.max_concurrent is not None else None, _headers(limits, verdict))

    async def leave(self, principal, admission: Admission) -> None:
        if admission.lease is None:
            return
        try:
            await self.store.leave(principal.id, admission.lease)
        except StoreUnavailable:
            pass  # the lease expires by itself

    # ------------------------------------------------------------ calls

    async def reserve(self, call) -> None:
        """Reserve ``call``'s estimated tokens and cost, or raise the 429 of the limit it would pass."""
        principal = call.principal
        if principal is None or not principal.limits.per_call:
            return
        limits = principal.limits
        prompt = prompt_tokens_estimate(call)
        completion = 0 if call.route == "openai_embeddings" else (
            call.max_tokens or self.settings.limits_default_completion_tokens)
        cost = self.settings.price_for(call.model).cost(prompt, completion)
        periods = periods_now()
        res = _new_id()
        try:
            verdict = await self.store.reserve(principal.id, limits, res, prompt + completion, cost, self.hold_s,
                                               periods)
        except StoreUnavailable:
            if self.settings.limits_fail_open:
                return
            raise
        if not verdict.ok:
            self._count_refusal(verdict.limit)
            raise refusal(principal.id, limits, verdict, periods, cost=cost, tokens=prompt + completion)
        call.reservation = res

    def settle(self, call, prompt: int, completion: int, cost: float) -> None:
        """The call's real usage replaces its reservation, in the background (never delays the answer)."""
        principal = call.principal
        if principal is None or self.store is None:
            return
        c = self._children.get((principal.id, call.label))
        if c is None:
            key = (principal.alias or principal.id) if self.settings.metrics_key_alias else "all"
            m = self.metrics
            c = self._children[principal.id, call.label] = (
                m.key_requests.labels(key=key, model=call.label),
                m.key_tokens.labels(key=key, model=call.label, kind="prompt"),
                m.key_tokens.labels(key=key, model=call.label, kind="completion"),
                m.key_cost.labels(key=key, model=call.label))
        c[0].inc()
        c[1].inc(prompt)
        c[2].inc(completion)
        c[3].inc(cost)
        self.store.record(principal.id, call.reservation, call.model, prompt, completion, cost,
                          principal.limits.tpm is not None, periods_now())

    async def aclose(self) -> None:
        """Let the settlements in flight reach the store (bounded: the store's timeout)."""
        if self.store is not None:
            await asyncio.wait_for(self.store.drain(), 5)

    async def drain(self) -> None:
        """Settlements recorded so far have reached the store (tests, /admin/usage)."""
        await self.store.drain()

    async def usage(self, since: str, until: str, key: str | None, model: str | None) -> list[dict]:
        await self.drain()
        return await self.store.usage(since, until, key, model)

    def _count_refusal(self, limit: str) -> None:
        child = self._refused.get(limit)
        if child is None:
            child = self._refused[limit] = self.metrics.limit_refusals.labels(limit=limit)
        child.inc()


_PROCESS = os.urandom(6).hex()  # unique across replicas, then a counter: cheaper than a uuid4 per call
_counter = itertools.count()


def _new_id() -> str:
    return f"{_PROCESS}{next(_counter):x}"


def prompt_tokens_estimate(call) -> int:
    """An upper estimate of a call's prompt tokens, so that a reservation covers the call: UTF-8 bytes
    / 3 (English runs ~4 characters a token, CJK ~1 character of 3 bytes), plus the chat template's
    tokens per message and around the prompt."""
    if call.messages:
        size = sum(len(str(m.get("content") or "").encode()) for m in call.messages)
        overhead = TEMPLATE_TOKENS * (len(call.messages) + 1)
    else:
        size = 3 * (call.prompt_chars or 0)  # characters: assume the worst, one token each
        overhead = TEMPLATE_TOKENS
    if call.tools:
        size += len(json.dumps(call.tools, default=str).encode())
    return size // BYTES_PER_TOKEN + 1 + overhead


def _headers(limits: Limits, v: Verdict) -> list[tuple[bytes, bytes]]:
    """What is left, in the names OpenAI's API uses (x-ratelimit-*), and the budgets' remainder."""
    h: list[tuple[bytes, bytes]] = []
    if limits.rpm is not None:
        h += [(b"x-ratelimit-limit-requests", str(limits.rpm).encode()),
              (b"x-ratelimit-remaining-requests", str(max(0, limits.rpm - v.requests_used)).encode()),
              (b"x-ratelimit-reset-requests", f"{math.ceil(v.requests_reset_s)}s".encode())]
    if limits.tpm is not None:
        h += [(b"x-ratelimit-limit-tokens", str(limits.tpm).encode()),
              (b"x-ratelimit-remaining-tokens", str(max(0, limits.tpm - v.tokens_used)).encode())]
    if limits.budget_usd_daily is not None:
        h.append((b"x-vgate-budget-remaining-usd-daily",
                  f"{max(0.0, limits.budget_usd_daily - v.spent_day):.6f}".encode()))
    if limits.budget_usd_monthly is not None:
        h.append((b"x-vgate-budget-remaining-usd-monthly",
                  f"{max(0.0, limits.budget_usd_monthly - v.spent_month):.6f}".encode()))
    return h


__all__ = ["Admission", "LimitExceeded", "Meter"]
