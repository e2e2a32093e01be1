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
- **Fairness.** Slots freed on an upstream that serves several models (LoRA adapters are models)
  go to the oldest waiting call of the highest class across those models; the floor and the cap are
  per model; a call that cannot use the freed slot (a retry avoiding that upstream) does not hold up
  the calls behind it.
- **Backpressure.** An interactive call when every upstream serving its model is saturated (see
  ``load``) by traffic it cannot overtake (no batch call of this gateway's there) — on arrival, or
  while it waits — any call when its model's queue holds ``max_queued_per_model`` calls, or when the
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
SCAN = 8  # waiters looked at past the head of a queue for one that can take a freed slot


@dataclass(eq=False, slots=True)
class Lease:
    """A slot on ``upstream``, held by one call of ``priority`` for ``model``; ``how`` it was chosen."""

    upstream: Upstream
    priority: str
    how: str
    model: str = ""


@dataclass(eq=False, slots=True)
class _Waiter:
    priority: str
    affinity: int | None
    exclude: Collection[Upstream]
    arrived: float = field(default_factory=time.monotonic)
    future: asyncio.Future[Lease] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass(eq=False, slots=True)
class _Model:
    """One model's queues and counts."""

    queues: dict[str, deque[_Waiter]] = field(default_factory=lambda: {p: deque() for p in PRIORITIES})
    running: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PRIORITIES, 0))
    last_interactive: float = float("-inf")  # time.monotonic() of its last interactive call

    def waiting(self) -> int:
        return len(self.queues["interactive"]) + len(self.queues["batch"])


class Scheduler:
    """Hands out upstream slots per model: interactive calls first, batch calls their share, a bounded queue."""
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
        self._models: dict[str, _Model] = {}

    def queued(self, model: str | None = None) -> int:
        """Calls waiting for a slot, for one model or all."""
        if model is not None:
            m = self._models.get(model)
            return m.waiting() if m is not None else 0
        return sum(m.waiting() for m in self._models.values())

    def running(self, model: str) -> dict[str, int]:
        """Calls holding a slot for the model, per priority class."""
        m = self._models.get(model)
        return dict(m.running) if m is not None else dict.fromkeys(PRIORITIES, 0)

    def refusal(self, model: str, size: int) -> tuple[str, str, float] | None:
        """Why ``size`` calls arriving together (a batch, or one batch-class call) would be refused now:
        (reason, message, retry after), or None."""
        serving = self._candidates(model)
        queued = self.queued(model)
        if _saturated_for_good(serving):
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
        m = self._models.get(model)
        if m is None:
            m = self._models[model] = _Model()
        if priority == "interactive":
            m.last_interactive = time.monotonic()
        ahead = len(m.queues["interactive"]) + (len(m.queues["batch"]) if priority == "batch" else 0)
        if not ahead:
            lease = self._try(model, m, serving, priority, affinity, exclude)
            if lease is not None:
                return lease
        if priority == "interactive" and _saturated_for_good(serving):
            # Saturated by traffic this call cannot overtake. When the gateway's own batch calls are
            # part of it, the call waits instead, and takes the first slot that frees up.
            raise self._saturated(serving, model)
        queued = m.waiting()
        if queued >= self.max_queued:
            raise OverloadedError(f"the gateway's queue for the model is full ({self.max_queued} waiting)",
                                  reason="queue_full", retry_after_s=self._retry_after(serving, queued))
        remaining = deadline - time.perf_counter()
        expected = self._expected_wait(serving, ahead)
        if remaining <= 0 or (expected is not None and expected > remaining):
            raise OverloadedError("the upstreams are too busy to start this call before its deadline",
                                  reason="deadline", retry_after_s=self._retry_after(serving, queued))
        waiter = _Waiter(priority, affinity, exclude)
        queue = m.queues[priority]
        queue.append(waiter)
        gauge = self.metrics.queued.labels(model=self._label(model), priority=priority)
        gauge.inc()
        try:
            async with asyncio.timeout(remaining):
                return await waiter.future
        except BaseException as exc:
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                self.release(waiter.future.result())  # handed a slot just as it gave up: pass it on
            else:
                try:
                    queue.remove(waiter)
                except ValueError:
                    pass
            if isinstance(exc, TimeoutError):
                raise OverloadedError("the upstreams are too busy: no slot freed up before the call's deadline",
                                      reason="deadline", retry_after_s=self._retry_after(serving, queued)) from None
            raise
        finally:
            gauge.dec()

    def release(self, lease: Lease, held_s: float | None = None) -> None:
        """Give back a lease's slot and hand it to the next waiting call."""
        lease.upstream.released(held_s)
        m = self._models.get(lease.model)
        if m is not None:
            m.running[lease.priority] -= 1
        if lease.priority == "batch":
            lease.upstream.batch_in_use -= 1
        self.dispatch()

    def dispatch(self) -> None:
        """Hand free slots to waiting calls: after a release, and whenever load or health changed.
        Each round places the best of every model's first placeable waiter: the higher class (after
        the batch floor), then the oldest."""
        while True:
            best: tuple[tuple[int, float], str, _Model, deque[_Waiter], _Waiter, list[Upstream]] | None = None
            for model, m in list(self._models.items()):
                if not m.waiting():
                    if not any(m.running.values()) and time.monotonic() - m.last_interactive > INTERACTIVE_WINDOW_S:
                        del self._models[model]  # nothing waits, runs or just ran: forget it (names are many)
                    continue
                serving = self._candidates(model)
                self._refuse_hopeless(model, m, serving)
                for rank, q in enumerate(self._order(m, serving)):
                    found = self._placeable(m, serving, q)
                    if found is not None:
                        key = (rank, found[0].arrived)
                        if best is None or key < best[0]:
                            best = (key, model, m, q, found[0], found[1])
                        break
            if best is None:
                return
            _, model, m, q, waiter, eligible = best
            q.remove(waiter)
            waiter.future.set_result(self._take(model, m, eligible, waiter.priority, waiter.affinity,
                                                self._candidates(model)))

    # ------------------------------------------------------------------ internals

    def _placeable(self, m: _Model, serving: Sequence[Upstream],
                   q: deque[_Waiter]) -> tuple[_Waiter, list[Upstream]] | None:
        """The first of the queue's first ``SCAN`` waiters a slot can be found for, and the slots."""
        for i, w in enumerate(q):
            if i >= SCAN:
                return None
            if w.future.done():
                continue
            eligible = self._eligible(m, serving, w.priority, w.exclude)
            if eligible:
                return w, eligible
        return None

    def _refuse_hopeless(self, model: str, m: _Model, serving: Sequence[Upstream]) -> None:
        """Interactive waiters are refused, as on arrival, once nothing they could overtake is left on
        upstreams that stay saturated (they waited on the gateway's own batch calls)."""
        inter = m.queues["interactive"]
        if inter and _saturated_for_good(serving):
            error = self._saturated(serving, model)
            while inter:
                w = inter.popleft()
                if not w.future.done():
                    w.future.set_exception(error)

    def _order(self, m: _Model, serving: Sequence[Upstream]) -> list[deque[_Waiter]]:
        """The model's queues to serve, first choice first, after dropping waiters that left."""
        for q in m.queues.values():
            while q and q[0].future.done():
                q.popleft()
        inter, batch = m.queues["interactive"], m.queues["batch"]
        if inter and batch:
            floor = self.batch_min_share * sum(u.slots for u in serving)
            return [batch, inter] if m.running["batch"] < floor else [inter, batch]
        return [q for q in (inter, batch) if q]

    def _try(self, model: str, m: _Model, serving: Sequence[Upstream], priority: str, affinity: int | None,
             exclude: Collection[Upstream]) -> Lease | None:
        eligible = self._eligible(m, serving, priority, exclude)
        return self._take(model, m, eligible, priority, affinity, serving) if eligible else None

    def _eligible(self, m: _Model, serving: Sequence[Upstream], priority: str,
                  exclude: Collection[Upstream]) -> list[Upstream]:
        """The upstreams that may take a call of ``priority`` now (no side effects)."""
        now = time.monotonic()
        if priority == "batch":
            if self.batch_max_share < 1.0 and now - m.last_interactive < INTERACTIVE_WINDOW_S and \
                    m.running["batch"] >= max(1.0, self.batch_max_share * sum(u.slots for u in serving)):
                return []  # interactive calls are about: the rest of the slots (and of vLLM's batch) stay theirs
            eligible = [u for u in serving if u.in_use < u.slots and u.saturation(now) < BATCH_HEADROOM]
        else:  # an upstream saturated partly by this gateway's batch calls still takes interactive ones
            eligible = [u for u in serving if u.in_use < u.slots and (u.saturation(now) < 1 or u.batch_in_use)]
        if exclude:
            others = [u for u in eligible if u not in exclude]
            # Only the excluded ones (a failed attempt's) are free: better them than waiting, unless
            # another upstream serves the model and will free up.
            if others or all(u in exclude for u in serving):
                eligible = others or eligible
            else:
                eligible = []
        return eligible

    def _take(self, model: str, m: _Model, eligible: list[Upstream], priority: str, affinity: int | None,
              serving: Sequence[Upstream]) -> Lease:
        upstream, how = self.chooser.pick(eligible, affinity, serving)
        upstream.took()
        upstream.breaker.probe_started()
        m.running[priority] += 1
        if priority == "batch":
            upstream.batch_in_use += 1
        return Lease(upstream, priority, how, model)

    def _saturated(self, serving: Sequence[Upstream], model: str) -> OverloadedError:
        return OverloadedError("every upstream serving the model is saturated", reason="saturated",
                               retry_after_s=self._retry_after(serving, self.queued(model)))

    @staticmethod
    def _expected_wait(serving: Sequence[Upstream], position: int) -> float | None:
        """Slots free up at ``sum(slots / hold_s)`` per second; ``position + 1`` of them take that long."""
        rate = sum(u.slots / u.hold_s for u in serving if u.hold_s)
        return (position + 1) / rate if rate > 0 else None

    def _retry_after(self, serving: Sequence[Upstream], queued: int) -> float:
        wait = self._expected_wait(serving, queued)
        return max(1.0, math.ceil(wait)) if wait is not None else 1.0


def _saturated_for_good(serving: Sequence[Upstream]) -> bool:
    """Every upstream saturated by traffic a call cannot overtake (none holds a batch call of ours)."""
    return bool(serving) and all(u.saturation() >= 1 and not u.batch_in_use for u in serving)
