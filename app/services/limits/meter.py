"""Limits and budgets per key, kept atomically in the store (``memory.py`` or ``redis_store.py``).

- A request, when it arrives (``admit``): the key's concurrency, its requests and tokens in the last
  minute, and its budgets not already spent; it holds a concurrency lease until it ends (``leave``).
- Each upstream call, before it goes (``reserve``): its tokens (``prompt_tokens_estimate`` plus
  ``max_tokens`` per completion it makes) and their cost at the model's price are reserved against
  tpm and the budgets, so concurrent calls see each other's reservations; a call whose reservation
  would pass a budget is refused. The passthrough caps what such a key's calls may generate
  (``cap_completion``), so the reservation bounds the cost and 200 calls at once against a nearly
  spent budget stay within it. After the call (``settle``) — finished, failed, cut short or
  cancelled, in the queue or during the reservation itself — its real usage is spent and the
  reservation released; a reservation never settled (a replica died) lapses after its hold.
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

from app.context import request_context
from app.services.limits.model import LimitExceeded, Limits, Verdict, periods_now, refusal
from app.services.state.connection import StoreUnavailable

log = structlog.get_logger("vgate.limits")
BYTES_PER_TOKEN = 3
TEMPLATE_TOKENS = 8  # a chat template's role markers per message (Qwen's are 5)


@dataclass(slots=True)
class Admission:
    """A request's admission: its concurrency lease (if the key has that limit) and what was left."""

    lease: str | None
    limits: Limits
    verdict: Verdict

    def headers(self, ctx) -> list[tuple[bytes, bytes]]:
        """What is left once this request's own calls so far are counted (``ctx.tokens``, ``ctx.cost_usd``)."""
        return limit_headers(self.limits, self.verdict, ctx.tokens if ctx else 0, ctx.cost_usd if ctx else 0.0)


class Meter:
    """Applies API keys' limits and budgets: admits requests, reserves and settles upstream calls, reports usage."""
    def __init__(self, settings, metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = None  # set by the lifespan: MemoryLimitStore or RedisLimitStore
        # A dead replica's leases expire after this (a request's deadline, twice, and a minute) ...
        self.lease_s = 2 * settings.request_timeout_s + 60.0
        self.hold_s = settings.request_timeout_s + 60.0  # ... and its reservations lapse after this
        self._refused: dict[str, object] = {}
        self._children: dict[tuple[str, str], tuple] = {}

    # ------------------------------------------------------------ requests

    async def admit(self, principal) -> Admission | None:
        """The request's admission (its lease and what is left), or a 429 naming the limit."""
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
        except asyncio.CancelledError:  # it may have been taken: give it back
            if limits.max_concurrent is not None:
                self.store.leave_soon(principal.id, lease)
            raise
        if not verdict.ok:
            self._count_refusal(verdict.limit)
            raise refusal(principal.id, limits, verdict, periods, headers=limit_headers(limits, verdict))
        return Admission(lease if limits.max_concurrent is not None else None, limits, verdict)

    def leave(self, principal, admission: Admission) -> None:
        """Give the request's lease back (in Redis: with the next settlements, retried while it is away)."""
        if admission.lease is not None:
            self.store.leave_soon(principal.id, admission.lease)

    # ------------------------------------------------------------ calls

    async def reserve(self, call) -> None:
        """Reserve ``call``'s estimated tokens and cost, or raise the 429 of the limit it would pass."""
        principal = call.principal
        if principal is None or not principal.limits.per_call:
            return
        limits = principal.limits
        prompt = prompt_tokens_estimate(call)
        completion = 0 if call.route == "openai_embeddings" else (
            (call.max_tokens or self.settings.limits_default_completion_tokens) * call.outputs)
        tokens = prompt + completion
        cost = self.settings.price_for(call.model).cost(prompt, completion)
        periods = periods_now()
        res = _new_id()
        try:
            verdict = await self.store.reserve(principal.id, limits, res, tokens, cost, self.hold_s, periods)
        except StoreUnavailable:
            if self.settings.limits_fail_open:
                return
            raise
        except asyncio.CancelledError:  # it may have been taken: release it
            self.store.record(principal.id, res, call.model, 0, 0, 0.0, False, False, periods)
            raise
        if not verdict.ok:
            self._count_refusal(verdict.limit)
            raise refusal(principal.id, limits, verdict, periods, cost=cost, tokens=tokens)
        call.reservation = (res, tokens, cost)
        ctx = request_context.get()
        if ctx is not None:
            ctx.tokens += tokens
            ctx.cost_usd += cost

    def settle(self, call, prompt: int, completion: int, cost: float) -> None:
        """The call's real usage is spent and its reservation released, in the background (never
        delays the answer); only a call the upstream took counts as a request in the usage report."""
        principal = call.principal
        if principal is None or self.store is None:
            return
        served = call.taken
        if served:
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
        res, held_tokens, held_cost = call.reservation or (None, 0, 0.0)
        ctx = request_context.get()
        if ctx is not None:
            ctx.tokens += prompt + completion - held_tokens
            ctx.cost_usd += cost - held_cost
        self.store.record(principal.id, res, call.model, prompt, completion, cost, principal.limits.tpm is not None,
                          served, periods_now())

    async def aclose(self) -> None:
        """Let the settlements in flight reach the store (bounded: a few seconds)."""
        if self.store is not None:
            try:
                await asyncio.wait_for(self.store.drain(), 5)
            except (TimeoutError, StoreUnavailable):
                log.warning("usage_not_flushed_at_shutdown")

    async def drain(self) -> None:
        """Settlements recorded so far have reached the store (tests, /admin/usage)."""
        await self.store.drain()

    async def usage(self, since: str, until: str, key: str | None, model: str | None) -> list[dict]:
        """Usage rows by day, key and model, after every pending settlement has reached the store."""
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
    """An upper estimate of a call's prompt tokens (all its prompts), so that a reservation
    covers the call: UTF-8 bytes / 3 (English runs ~4 characters a token, CJK ~1 character of 3
    bytes), plus the chat template's tokens per message and around the prompt; a prompt known only
    by its characters (completions, embeddings) counts a token per character."""
    if call.messages:
        size = sum(len(str(m.get("content") or "").encode()) for m in call.messages)
        overhead = TEMPLATE_TOKENS * (len(call.messages) + 1)
    else:
        size = BYTES_PER_TOKEN * (call.prompt_chars or 0)
        overhead = TEMPLATE_TOKENS
    if call.tools:
        size += len(json.dumps(call.tools, default=str).encode())
    return size // BYTES_PER_TOKEN + 1 + overhead


def limit_headers(limits: Limits, v: Verdict, tokens: int = 0, cost: float = 0.0) -> list[tuple[bytes, bytes]]:
    """What is left, in the names OpenAI's API uses (x-ratelimit-*), and the budgets' remainder;
    ``tokens`` and ``cost``: the request's own, beyond what ``v`` counted."""
    h: list[tuple[bytes, bytes]] = []
    if limits.rpm is not None:
        h += [(b"x-ratelimit-limit-requests", str(limits.rpm).encode()),
              (b"x-ratelimit-remaining-requests", str(max(0, limits.rpm - v.requests_used)).encode()),
              (b"x-ratelimit-reset-requests", f"{math.ceil(v.requests_reset_s)}s".encode())]
    if limits.tpm is not None:
        h += [(b"x-ratelimit-limit-tokens", str(limits.tpm).encode()),
              (b"x-ratelimit-remaining-tokens", str(max(0, limits.tpm - v.tokens_used - tokens)).encode())]
    if limits.budget_usd_daily is not None:
        h.append((b"x-vgate-budget-remaining-usd-daily",
                  f"{max(0.0, limits.budget_usd_daily - v.spent_day - cost):.6f}".encode()))
    if limits.budget_usd_monthly is not None:
        h.append((b"x-vgate-budget-remaining-usd-monthly",
                  f"{max(0.0, limits.budget_usd_monthly - v.spent_month - cost):.6f}".encode()))
    return h


__all__ = ["Admission", "LimitExceeded", "Meter", "limit_headers"]
