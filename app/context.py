"""Request-scoped context: what the HTTP middleware sets up for a request and the services read.

One ``ContextVar`` holds a :class:`RequestContext`: the request id and the timer of upstream time
(for the overhead header). A task started while handling the request (an agent run) inherits the
same object. Each upstream call gets ``<request id>-<n>`` with ``n`` from one counter for the whole
process: the id is unique even when two requests carry the same client-chosen X-Request-Id.

Neutral on purpose: the middleware and the LM client both import it, neither imports the other.
"""

from __future__ import annotations

import itertools
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any


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
        """Mark the start of an upstream call; overlapping calls are timed as one busy span."""
        if self._active == 0:
            self._since = time.perf_counter()
        self._active += 1

    def exit(self) -> None:
        """Mark the end of an upstream call; the span closes when the last overlapping call ends."""
        self._active -= 1
        if self._active == 0:
            self.busy_s += time.perf_counter() - self._since

    def current(self) -> float:
        """Seconds spent in upstream calls so far, the open span included."""
        if self._active:
            return self.busy_s + time.perf_counter() - self._since
        return self.busy_s


_upstream_calls = itertools.count(1)  # next() on a count is atomic: safe from any thread


def upstream_request_id(base: str) -> str:
    """``<base>-<n>`` for the next upstream call: vLLM refuses an id that is already running, so
    a batch's items, an agent's steps and each retry get their own, and a client that reuses its
    X-Request-Id (or two clients that pick the same one) cannot make two calls collide."""
    return f"{base}-{next(_upstream_calls)}"


@dataclass(slots=True)
class RequestContext:
    """What one request carries through its handlers: its id, upstream timer, routing hints, caller and spending."""
    request_id: str
    timer: UpstreamTimer = field(default_factory=UpstreamTimer)
    # Routing hints from the request's headers (set by ``routers.deps.routing_hints``): the priority
    # class it asked for, and a session id that keeps its calls on one upstream (prefix affinity).
    priority: str | None = None
    session: str | None = None
    principal: Any = None  # the caller's key (app.services.access.Principal), when keys are configured
    # This request's tokens and cost so far (real for calls that ended, reserved for those in flight),
    # for the remaining-limit headers of a key with limits.
    tokens: int = 0
    cost_usd: float = 0.0

    def next_upstream_id(self) -> str:
        """The id of this request's next upstream call: ``<request id>-<n>``."""
        return upstream_request_id(self.request_id)


request_context: ContextVar[RequestContext | None] = ContextVar("vgate_request_context", default=None)


def current_request_id() -> str | None:
    """The id of the request being handled, or None outside a request."""
    ctx = request_context.get()
    return ctx.request_id if ctx is not None else None
