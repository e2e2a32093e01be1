"""Admission: which call gets an upstream's slot, and when; a bounded queue per model; fast 429s.

- **Slots.** At most ``max_inflight_per_upstream`` gateway calls in flight per upstream (vLLM's
  ``max_num_seqs`` by default: enough to keep continuous batching full).
- **Late binding.** A call that finds no upstream able to take it waits in its model's queue — not
  in one upstream's — and is handed the first slot that frees up on any upstream serving the model.
- **Priorities.** ``interactive`` (chat, /agent, a single /predict) before ``batch`` (a /predict
  batch): a freed slot goes to the oldest interactive call, except that batch calls keep a floor of
  ``batch_min_share`` of the model's slots while they wait, so a batch is never starved, and, while
  interactive calls are arriving (in the last ``INTERACTIVE_WINDOW_S``), take at most
  ``batch_max_share`` of them: vLLM's steps slow down with every sequence, and a batch's prefills
  queue ahead of a later call's. A batch alone runs on every slot. Batch calls
  also stop at half of vLLM's saturation thresholds: the headroom left is what lets interactive
  calls in at once, instead of behind the batch in vLLM's own queue.
- **Backpressure.** An interactive call when every upstream serving its model is saturated (see
  ``load``) by traffic it cannot overtake (no batch call of this gateway's there), any call when its
  model's queue holds ``max_queued_per_model`` calls, or when the
  expected wait (from how long calls hold their slots) passes its deadline: a 429 at once with
  ``Retry-After``. A batch call waits out a saturation instead (the batch as a whole was checked on
  arrival). Time in the queue counts against the call's deadline.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from app.errors import OverloadedError
from app.metrics import Metrics
from app.services.upstreams.choice import Chooser
from app.services.upstreams.upstream import Upstream

PRIORITIES = ("interactive", "batch")
BATCH_HEADROOM = 0.5  # batch calls are dispatched only below this share of the saturation thresholds
INTERACTIVE_WINDOW_S = 10.0  # batch_max_share applies while interactive calls came this recently


@dataclass(eq=False, slots=True)
class Lease:
    """A slot on ``upstream``, held by one call of ``priority``; ``how`` it was chosen."""

    upstream: Upstream
    priority: str
    how: str


@dataclass(eq=False, slots=True)
class _Waiter:
    model: str
    priority: str
    affinity: int | None
    exclude: Collection[Upstream]
    future: asyncio.Future[Lease] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Scheduler:
    def __init__(self, candidates: Callable[[str], Sequence[Upstream]], chooser: Chooser, *, max_queued: int,
                 batch_min_share: float, metrics: Metrics, label: Callable[[str], str],
                 batch_max_share: float = 1.0) -> None:
        self._candidates = candidates  # model → the upstreams that serve it and are up
        self.chooser = chooser
        self.max_queued = max_queued
        self.batch_min_share = batch_min_share
        self.batch_max_share = batch_max_share
        self.metrics = metrics
        self._label = label
        self._queues: dict[str, dict[str, deque[_Waiter]]] = {}
        self.running = dict.fromkeys(PRIORITIES, 0)
        self.last_interactive = float("-inf")  # time.monotonic() of the last interactive call

    def queued(self, model: str | None = None) -> int:
        queues = [self._queues[model]] if model is not None and model in self._queues else (
            [] if model is not None else list(self._queues.values()))
        return sum(len(q) for qs in queues for q in qs.values())

    def refusal(self, model: str, priority: str, size: int) -> tuple[str, str, float] | None:
        """Why ``size`` calls arriving together would be refused now, if they would: (reason,
        message, retry after) — for a batch, checked once on arrival."""
        serving = self._candidates(model)
        queued = self.queued(model)
        if serving and all(u.saturation() >= 1 and not u.batch_in_use for u in serving):
            return "saturated", "every upstream serving the model is saturated", self._retry_after(serving, queued)
        free = sum(max(0, u.slots - u.in_use) for u in serving)
        if queued + size > self.max_queued + free:
            return ("queue_full", f"the gateway's queue for the model cannot take {size} more calls "
                    f"({queued} waiting, room for {self.max_queued})", self._retry_after(serving, queued + size))
        return None

    # ------------------------------------------------------------------ acquire / release

    async def acquire(self, model: str, priority: str, deadline: float, *, affinity: int | None = None,
                      exclude: Collection[Upstream] = ()) -> Lease:
        """A slot, or ``OverloadedError``. ``deadline`` is on ``time.perf_counter``'s clock."""
        serving = self._candidates(model)
        queues = self._queues.setdefault(model, {p: deque() for p in PRIORITIES})
        if priority == "interactive":
            self.last_interactive = time.monotonic()
        ahead = len(queues["interactive"]) + (len(queues["batch"]) if priority == "batch" else 0)
        if not ahead:
            lease = self._try(serving, priority, affinity, exclude)
            if lease is not None:
                return lease
        if priority == "interactive" and serving and all(
                u.saturation() >= 1 and not u.batch_in_use for u in serving):
            # Saturated by traffic this call cannot overtake. When the gateway's own batch calls are
            # part of it, the call waits instead: no batch call is dispatched while vLLM is this busy,
            # and the first slot that frees up is this call's.
            raise OverloadedError("every upstream serving the model is saturated", reason="saturated",
                                  retry_after_s=self._retry_after(serving, self.queued(model)))
        queued = len(queues["interactive"]) + len(queues["batch"])
        if queued >= self.max_queued:
            raise OverloadedError(f"the gateway's queue for the model is full ({self.max_queued} waiting)",
                                  reason="queue_full", retry_after_s=self._retry_after(serving, queued))
        remaining = deadline - time.perf_counter()
        expected = self._expected_wait(serving, ahead)
        if remaining <= 0 or (expected is not None and expected > remaining):
            raise OverloadedError("the upstreams are too busy to start this call before its deadline",
                                  reason="deadline", retry_after_s=self._retry_after(serving, queued))
        waiter = _Waiter(model, priority, affinity, exclude)
        queues[priority].append(waiter)
        gauge = self.metrics.queued.labels(model=self._label(model), priority=priority)
        gauge.inc()
        try:
            async with asyncio.timeout(remaining):
                return await waiter.future
        except BaseException as exc:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(waiter.future.result())  # handed a slot just as it gave up: pass it on
            else:
                try:
                    queues[priority].remove(waiter)
                except ValueError:
                    pass
            if isinstance(exc, TimeoutError):
                raise OverloadedError("the upstreams are too busy: no slot freed up before the call's deadline",
                                      reason="deadline", retry_after_s=self._retry_after(serving, queued)) from None
            raise
        finally:
            gauge.dec()

    def release(self, lease: Lease, held_s: float | None = None) -> None:
        lease.upstream.released(held_s)
        self.running[lease.priority] -= 1
        if lease.priority == "batch":
            lease.upstream.batch_in_use -= 1
        self.dispatch()

    def dispatch(self) -> None:
        """Hand free slots to waiting calls: after a release, and whenever load or health changed."""
        for model, queues in self._queues.items():
            if not queues["interactive"] and not queues["batch"]:
                continue
            serving = self._candidates(model)
            while True:
                order = self._order(queues, serving)
                for q in order:
                    w = q[0]
                    lease = self._try(serving, w.priority, w.affinity, w.exclude)
                    if lease is not None:
                        q.popleft()
                        w.future.set_result(lease)
                        break
                else:
                    break

    # ------------------------------------------------------------------ internals

    def _order(self, queues: dict[str, deque[_Waiter]], serving: Sequence[Upstream]) -> list[deque[_Waiter]]:
        """The queues to serve, first choice first, after dropping waiters that left."""
        for q in queues.values():
            while q and q[0].future.done():
                q.popleft()
        inter, batch = queues["interactive"], queues["batch"]
        if inter and batch:
            floor = self.batch_min_share * sum(u.slots for u in serving)
            return [batch, inter] if self.running["batch"] < floor else [inter, batch]
        return [q for q in (inter, batch) if q]

    def _try(self, serving: Sequence[Upstream], priority: str, affinity: int | None,
             exclude: Collection[Upstream]) -> Lease | None:
        limit = 1.0 if priority == "interactive" else BATCH_HEADROOM
        now = time.monotonic()
        if priority == "batch" and self.batch_max_share < 1.0 and now - self.last_interactive < INTERACTIVE_WINDOW_S \
                and self.running["batch"] >= max(1.0, self.batch_max_share * sum(u.slots for u in serving)):
            return None  # interactive calls are about: the rest of the slots (and of vLLM's batch) stay theirs
        eligible = [u for u in serving if u.in_use < u.slots and u.saturation(now) < limit]
        if exclude:
            others = [u for u in eligible if u not in exclude]
            # Only the excluded ones (a failed attempt's) are free: better them than waiting, unless
            # another upstream serves the model and will free up.
            if others or all(u in exclude for u in serving):
                eligible = others or eligible
            else:
                eligible = []
        if not eligible:
            return None
        upstream, how = self.chooser.pick(eligible, affinity, serving)
        upstream.took()
        upstream.breaker.probe_started()
        self.running[priority] += 1
        if priority == "batch":
            upstream.batch_in_use += 1
        return Lease(upstream, priority, how)

    @staticmethod
    def _expected_wait(serving: Sequence[Upstream], position: int) -> float | None:
        """Slots free up at ``sum(slots / hold_s)`` per second; ``position + 1`` of them take that long."""
        rate = sum(u.slots / u.hold_s for u in serving if u.hold_s)
        return (position + 1) / rate if rate > 0 else None

    def _retry_after(self, serving: Sequence[Upstream], queued: int) -> float:
        wait = self._expected_wait(serving, queued)
        return max(1.0, math.ceil(wait)) if wait is not None else 1.0
