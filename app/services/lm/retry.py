"""Retries of one upstream call: a plain loop, with the policy in one small object.

Retried only where safe (the error says so: connect errors, 429/502/503/504, timeouts or drops
before the first chunk), with exponential backoff and jitter, ``Retry-After`` honoured, never
sleeping past the call's deadline. A loop rather than tenacity's ``AsyncRetrying``: the machinery
costs ~30 µs on every call, retried or not (benchmarks/RESULTS.md), and the policy is a few lines.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from app.services.lm.errors import AttemptFailed

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many times a failed attempt is retried, and the exponential backoff between attempts."""
    max_retries: int  # after the first attempt
    backoff_initial_s: float
    backoff_max_s: float

    def backoff_s(self, retry: int, retry_after: float | None) -> float:
        """The sleep before retry number ``retry`` (1, 2, ...): initial * 2^(n-1) plus up to
        ``initial`` of jitter, capped at the maximum, and never shorter than ``Retry-After``."""
        base = self.backoff_initial_s * 2 ** (retry - 1)
        wait = min(self.backoff_max_s, base + random.uniform(0, self.backoff_initial_s))
        return max(wait, retry_after) if retry_after is not None else wait


async def with_retries(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    deadline: float,
    on_retry: Callable[[int, AttemptFailed, float], None],
) -> tuple[T, int]:
    """``attempt()`` until it succeeds or may not be retried; returns its value and the attempt count.
    Raises the last attempt's ``VGateError``, with ``attempts`` in its details."""
    n = 0
    while True:
        n += 1
        try:
            return await attempt(), n
        except AttemptFailed as failed:
            # Another upstream can take it (the failed one is set aside): no reason to wait.
            sleep = 0.0 if failed.failover else policy.backoff_s(n, failed.retry_after)
            if not failed.retry or n > policy.max_retries or time.perf_counter() + sleep >= deadline:
                failed.error.details["attempts"] = n
                raise failed.error from failed
            on_retry(n, failed, sleep)
        await asyncio.sleep(sleep)
