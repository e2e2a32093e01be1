"""A circuit breaker per upstream: closed → open (cooldown) → half-open (one probe) → closed.

Failures that open it: a connect failure opens it at once (the server is not there); 5xx answers and
timeouts open it after ``failures`` in a row. After the cooldown one probe goes through — the
monitor's ``/health`` check, or a real request when no monitor runs; its success closes the breaker,
its failure opens it again for twice as long (up to ``MAX_COOLDOWN_S``). Any success closes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

MAX_COOLDOWN_S = 60.0

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class Breaker:
    """An upstream's circuit breaker: closed, open after repeated failures, half-open for one probe after a cooldown."""
    __slots__ = ("failures", "cooldown_s", "state", "consecutive", "_opened_at", "_current_cooldown",
                 "_probing", "_probe_at", "_on_change")

    def __init__(self, failures: int, cooldown_s: float, on_change: Callable[[str], None] | None = None) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self.state = CLOSED
        self.consecutive = 0
        self._opened_at = 0.0
        self._current_cooldown = cooldown_s
        self._probing = False
        self._probe_at = 0.0
        self._on_change = on_change

    def _set(self, state: str) -> None:
        if state != self.state:
            self.state = state
            if self._on_change is not None:
                self._on_change(state)

    def available(self, now: float | None = None) -> bool:
        """May a request go there now? In half-open state only the one probe may."""
        if self.state == CLOSED:
            return True
        now = time.monotonic() if now is None else now
        if self.state == OPEN:
            if now - self._opened_at < self._current_cooldown:
                return False
            self._set(HALF_OPEN)
        # A probe that never gave a verdict (its caller left; an answer about the request, not the
        # upstream) does not keep the upstream out for good: after a cooldown another may go.
        return not self._probing or now - self._probe_at > self._current_cooldown

    def probe_started(self) -> None:
        """A request (or health check) was let through in half-open state."""
        if self.state == HALF_OPEN:
            self._probing = True
            self._probe_at = time.monotonic()

    def success(self) -> None:
        """A call or probe succeeded: close the breaker and reset the failure count and cooldown."""
        self.consecutive = 0
        self._probing = False
        self._current_cooldown = self.cooldown_s
        self._set(CLOSED)

    def failure(self, *, at_once: bool = False) -> None:
        """A call or probe failed: open the breaker after enough failures (at once for a refused connection)."""
        self.consecutive += 1
        if self.state == HALF_OPEN:
            self._open(self._current_cooldown * 2)
        elif self.state == CLOSED and (at_once or self.consecutive >= self.failures):
            self._open(self.cooldown_s)
        elif self.state == OPEN and at_once:
            self._opened_at = time.monotonic()  # still down: the cooldown starts again

    def _open(self, cooldown: float) -> None:
        self._probing = False
        self._current_cooldown = min(MAX_COOLDOWN_S, cooldown)
        self._opened_at = time.monotonic()
        self._set(OPEN)
