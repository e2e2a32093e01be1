"""Request-scoped context: what the HTTP middleware sets up for a request and the services read.

One ``ContextVar`` holds a :class:`RequestContext`: the request id, the timer of upstream time
(for the overhead header) and the counter that numbers the request's upstream calls. A task
started while handling the request (an agent run) inherits the same object, so the calls of one
run are numbered ``<request id>-1``, ``<request id>-2``, ...

Neutral on purpose: the middleware and the LM client both import it, neither imports the other.
"""

from __future__ import annotations

import itertools
import time
from contextvars import ContextVar
from dataclasses import dataclass, field


class UpstreamTimer:
    """Wall time during which at least one upstream call of this request was in progress.

    Concurrent calls (a batch) are counted once, so ``total - upstream`` is the gateway's
    own time: parsing, validation, queueing for a slot, rendering.
    """

    __slots__ = ("_active", "_since", "busy_s")

    def __init__(self) -> None:
        self._active = 0
        self._since = 0.0
        self.busy_s = 0.0

    def enter(self) -> None:
        if self._active == 0:
            self._since = time.perf_counter()
        self._active += 1

    def exit(self) -> None:
        self._active -= 1
        if self._active == 0:
            self.busy_s += time.perf_counter() - self._since

    def current(self) -> float:
        if self._active:
            return self.busy_s + time.perf_counter() - self._since
        return self.busy_s


@dataclass(slots=True)
class RequestContext:
    request_id: str
    timer: UpstreamTimer = field(default_factory=UpstreamTimer)
    _calls: itertools.count = field(default_factory=lambda: itertools.count(1))

    def next_upstream_id(self) -> str:
        """A request id for the next upstream call: unique per call, as vLLM refuses an id that
        is already running (a batch's items, an agent's steps and retries are separate calls)."""
        return f"{self.request_id}-{next(self._calls)}"


request_context: ContextVar[RequestContext | None] = ContextVar("vgate_request_context", default=None)


def current_request_id() -> str | None:
    ctx = request_context.get()
    return ctx.request_id if ctx is not None else None
