"""Calls across the upstreams: the slot, the attempts and the failover — shared by the LM client
(/predict, /agent) and the OpenAI-compatible passthrough, so every call is routed, retried and
counted alike.

``open_call(call, open_once, ...)`` takes a slot on the upstream the pool picks and opens the call
with ``open_once(upstream)``, retried where safe (``retry.py``): a failed attempt frees its slot and
tells the upstream's breaker, and the next one goes elsewhere, at once, when another upstream serves
the model. A refusal by the scheduler is a 429 counted as shed.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import structlog

from app.context import UpstreamTimer, request_context, upstream_request_id
from app.errors import OverloadedError, UpstreamTimeoutError, VGateError
from app.metrics import Metrics
from app.services.lm.calls import Call
from app.services.lm.errors import AttemptFailed
from app.services.lm.retry import RetryPolicy, with_retries
from app.services.upstreams import Lease, Upstream, UpstreamPool, prefix_key
from app.settings import Settings

log = structlog.get_logger("vgate.lm")
T = TypeVar("T")


class Dispatcher:
    """Sends each call: reserves the key's limits, waits for a slot, picks an upstream, retries, settles."""
    def __init__(self, pool: UpstreamPool, settings: Settings, metrics: Metrics, meter=None) -> None:
        self.pool = pool
        self.meter = meter  # the caller's key's tpm and budgets, reserved before a call goes
        self.scheduler = pool.scheduler
        self.settings = settings
        self.metrics = metrics
        self._retry = RetryPolicy(settings.max_retries, settings.retry_backoff_initial_s, settings.retry_backoff_max_s)
        self._picks: dict[tuple[str, str], Any] = {}  # metric children, once per (upstream, how)

    def priority(self, route: str) -> str:
        """The route's priority class, as the request's header may change it (see ``Settings``)."""
        default = self.settings.priority_for(route)
        ctx = request_context.get()
        asked = ctx.priority if ctx is not None else None
        if asked is None or asked == default:
            return default
        if asked == "batch" or self.settings.allow_priority_raise or (
                ctx.principal is not None and ctx.principal.priority_raise):
            return asked
        return default

    def affinity(self, model: str, messages: list[dict[str, Any]], tools: Any) -> int | None:
        """The prefix key that keeps calls sharing a prefix (or a session) on one upstream, or None."""
        ctx = request_context.get()
        session = ctx.session if ctx is not None else None
        return prefix_key(model, messages, tools, session)

    async def admit_batch(self, model: str | None, size: int, priority_route: str) -> str:
        """The model a batch of ``size`` calls will use, or a 429 for the whole batch when its
        priority class would be refused now: every upstream saturated, or the queue too short for
        what the free slots cannot take."""
        model = await self.pool.resolve(model)
        self._admit(model, self.priority(priority_route), size)
        return model

    def _admit(self, model: str, priority: str, size: int) -> None:
        reason = self.scheduler.refusal(model, size)
        if reason is not None:
            self.metrics.shed.labels(model=self.pool.label(model), priority=priority, reason=reason[0]).inc()
            raise OverloadedError(reason[1], reason=reason[0], retry_after_s=reason[2])

    async def acquire(self, call: Call, deadline: float) -> Lease:
        """A slot for ``call`` on the upstream the pool picks; a refusal is counted as shed. A batch-class
        call of its own (not an item of an admitted batch) is checked on arrival as a batch is."""
        try:
            if call.priority == "batch" and not call.in_batch and not call.tried:
                self._admit(call.model, "batch", 1)
            lease = await self.scheduler.acquire(call.model, call.priority, deadline, affinity=call.affinity,
                                                 exclude=call.tried)
        except OverloadedError as exc:
            call.outcome = "shed"
            self.metrics.shed.labels(model=call.label, priority=call.priority, reason=exc.reason).inc()
            raise
        finally:
            if not call.started:
                call.started = time.perf_counter()  # what it waited until now is queue time
        call.lease, call.admitted = lease, True
        pick = self._picks.get((lease.upstream.name, lease.how))
        if pick is None:
            pick = self._picks[(lease.upstream.name, lease.how)] = self.metrics.upstream_picks.labels(
                upstream=lease.upstream.name, how=lease.how)
        pick.inc()
        return lease

    def release(self, call: Call) -> None:
        """Give back the call's slot (once; a call that holds none is left as it is)."""
        if call.lease is not None:
            lease, call.lease = call.lease, None
            self.scheduler.release(lease, time.perf_counter() - call.started)

    def broke(self, call: Call) -> None:
        """The call's stream broke midway: its upstream's breaker hears of it."""
        if call.upstream is not None:
            self.pool.failed(call.upstream, at_once=False)

    async def open_call(self, call: Call, open_once: Callable[[Upstream], Awaitable[T]], deadline: float,
                        timer: UpstreamTimer | None) -> T:
        """See the module's docstring. The slot stays held on success, until ``release``. First the
        call's tokens and cost are reserved against its key's limits (a 429 if they would pass one)."""
        if self.meter is not None:
            ctx = request_context.get()
            call.principal = ctx.principal if ctx is not None else None
            if call.principal is not None:
                try:
                    await self.meter.reserve(call)
                except VGateError:
                    call.outcome = "limited"
                    raise

        async def attempt() -> T:
            lease = await self.acquire(call, deadline)
            upstream = lease.upstream
            call.upstream = upstream
            if not call.timing and timer is not None:
                timer.enter()
                call.timing = True
            try:
                opened = await open_once(upstream)
            except AttemptFailed as failed:
                self.release(call)
                call.tried.add(upstream)
                if failed.health:
                    self.pool.failed(upstream, at_once=failed.reason == "connect")
                failed.failover = any(u not in call.tried for u in self.pool.candidates(call.model))
                raise
            except BaseException:
                self.release(call)
                raise
            self.pool.succeeded(upstream)
            return opened

        opened, call.attempts = await with_retries(
            attempt, self._retry, deadline, lambda n, failed, sleep: self._on_retry(call.label, n, failed, sleep))
        return opened

    def attempt_setup(self, call: Call, deadline: float, request_id: str | None, headers: dict[str, str] | None,
                      *, answer_whole: bool = False) -> tuple[httpx.Timeout, dict[str, str]]:
        """One attempt's timeouts and headers. Every timeout is bounded by what is left of the deadline;
        ``answer_whole``: the upstream is silent until it has finished (a non-stream answer), so the
        read timeout is the deadline itself. The attempt gets its own upstream request id."""
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            raise AttemptFailed(UpstreamTimeoutError("upstream call exceeded its deadline"),
                                retry=False, reason="deadline")
        s = self.settings
        timeout = httpx.Timeout(connect=min(s.connect_timeout_s, remaining),
                                read=remaining if answer_whole else min(s.read_timeout_s, remaining),
                                write=min(s.read_timeout_s, remaining), pool=remaining)
        out = {**(headers or {}), "content-type": "application/json"}
        call.upstream_request_id = upstream_id = self.next_request_id(request_id)
        if upstream_id:
            out["x-request-id"] = upstream_id
        return timeout, out

    def next_request_id(self, request_id: str | None) -> str | None:
        """``<request id>-<n>``: unique per upstream call, a retry included (vLLM refuses an id that is
        already running, and an attempt it is still aborting may be)."""
        if request_id is not None:
            return upstream_request_id(request_id)
        ctx = request_context.get()
        return ctx.next_upstream_id() if ctx is not None else None

    def _on_retry(self, label: str, attempt: int, failed: AttemptFailed, sleep_s: float) -> None:
        self.metrics.upstream_retries.labels(model=label, reason=failed.reason).inc()
        log.info("upstream_retry", attempt=attempt, reason=failed.reason, sleep_s=round(sleep_s, 3))
