"""Admission to one upstream: at most ``slots`` calls in flight, a bounded FIFO queue behind them,
and no call left waiting past its deadline.

vLLM queues without bound and answers no 429 by default: backpressure is the gateway's job. A call
that finds the queue full, or whose deadline would pass before a slot frees up (judged from how
long calls have been holding their slots), is refused at once with a 503 ``upstream_overloaded``
and a ``Retry-After``; one that waits until its deadline gets the same. Time in the queue counts
against the call's deadline.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque

from app.errors import UpstreamUnavailableError

_EWMA_ALPHA = 0.2


class Overloaded(UpstreamUnavailableError):
    type = "upstream_overloaded"

    def __init__(self, message: str, *, reason: str, retry_after_s: float) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.reason = reason  # queue_full, deadline: a bounded label value


class Admission:
    __slots__ = ("slots", "max_queued", "in_use", "_waiters", "hold_s")

    def __init__(self, slots: int, max_queued: int) -> None:
        self.slots = slots
        self.max_queued = max_queued
        self.in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.hold_s: float | None = None  # moving average of how long a call holds its slot

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def expected_wait_s(self, position: int) -> float | None:
        """Expected wait of the ``position``-th waiter (0 = next in line): slots free up at a rate of
        ``slots / hold_s``, so ``position + 1`` of them take ``(position + 1) * hold_s / slots``."""
        if self.hold_s is None:
            return None
        return (position + 1) * self.hold_s / self.slots

    def _retry_after(self) -> float:
        wait = self.expected_wait_s(self.queued)
        return max(1.0, math.ceil(wait)) if wait is not None else 1.0

    async def acquire(self, deadline: float) -> None:
        """A slot, or ``Overloaded``. ``deadline`` is on ``time.perf_counter``'s clock."""
        if self.in_use < self.slots and not self._waiters:
            self.in_use += 1
            return
        if len(self._waiters) >= self.max_queued:
            raise Overloaded(f"the gateway's queue for the upstream is full ({self.max_queued} waiting)",
                             reason="queue_full", retry_after_s=self._retry_after())
        remaining = deadline - time.perf_counter()
        expected = self.expected_wait_s(len(self._waiters))
        if remaining <= 0 or (expected is not None and expected > remaining):
            raise Overloaded("the upstream is too busy to start this call before its deadline",
                             reason="deadline", retry_after_s=self._retry_after())
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(remaining):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self.release()  # a slot was handed over just as we gave up: pass it on
            else:
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass
            if isinstance(exc, TimeoutError):
                raise Overloaded("the upstream is too busy: no slot freed up before the call's deadline",
                                 reason="deadline", retry_after_s=self._retry_after()) from None
            raise

    def release(self, held_s: float | None = None) -> None:
        if held_s is not None:
            self.hold_s = held_s if self.hold_s is None else self.hold_s + _EWMA_ALPHA * (held_s - self.hold_s)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the next in line: in_use stays
                return
        self.in_use -= 1
