"""Pure ASGI middleware (no BaseHTTPMiddleware: it buffers and costs a task per request).

For every HTTP request it
- takes or makes the request id, binds it to structlog's context so every log line carries it;
- measures the time spent waiting on the upstream (see ``UpstreamTimer``) and reports the
  gateway's own overhead in the ``X-Vgate-Overhead-Ms`` header and a histogram;
- counts requests by route template, method and status; logs one access line.
"""

from __future__ import annotations

import json
import time
from contextvars import ContextVar

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.logging import request_id_var, sanitize_request_id
from app.metrics import Metrics

log = structlog.get_logger("vgate.access")

KNOWN_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
REQUEST_ID_HEADER = b"x-request-id"
OVERHEAD_HEADER = b"x-vgate-overhead-ms"


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


upstream_timer_var: ContextVar[UpstreamTimer | None] = ContextVar("vgate_upstream_timer", default=None)


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        start = time.perf_counter()
        incoming = None
        for k, v in scope["headers"]:
            if k == REQUEST_ID_HEADER:
                incoming = v.decode("latin-1")
                break
        request_id = sanitize_request_id(incoming)
        timer = UpstreamTimer()
        rid_token = request_id_var.set(request_id)
        timer_token = upstream_timer_var.set(timer)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        scope.setdefault("state", {})["request_id"] = request_id

        status = 500
        response_started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                overhead_ms = (time.perf_counter() - start - timer.current()) * 1000
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER, request_id.encode("latin-1")))
                headers.append((OVERHEAD_HEADER, f"{overhead_ms:.2f}".encode()))
                message["headers"] = headers
            await send(message)

        self.metrics.requests_in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            # Here, not in an app-level handler: Starlette runs those outside this middleware, after
            # the request id is unbound, so the log line and the response would lose it.
            log.exception("unhandled_error", path=scope.get("path"))
            if response_started:
                raise
            body = json.dumps({"error": {"type": "internal_error", "request_id": request_id,
                                         "message": "internal error; the request id is in the logs"}}).encode()
            await send_wrapper({"type": "http.response.start", "status": 500,
                                "headers": [(b"content-type", b"application/json"),
                                            (b"content-length", str(len(body)).encode())]})
            await send_wrapper({"type": "http.response.body", "body": body})
        finally:
            self.metrics.requests_in_flight.dec()
            elapsed = time.perf_counter() - start
            overhead = max(0.0, elapsed - timer.current())
            route_obj = scope.get("route")
            route = getattr(route_obj, "path", None) or "unmatched"
            method = scope.get("method", "")
            if method not in KNOWN_METHODS:
                method = "OTHER"  # bounded label values: a client may send any method
            if not response_started:
                status = 500
            self.metrics.requests.labels(route=route, method=method, status=str(status)).inc()
            self.metrics.request_duration.labels(route=route).observe(elapsed)
            self.metrics.overhead.labels(route=route).observe(overhead)
            log.info(
                "request",
                method=method,
                path=scope.get("path"),
                route=route,
                status=status,
                duration_ms=round(elapsed * 1000, 2),
                overhead_ms=round(overhead * 1000, 2),
            )
            request_id_var.reset(rid_token)
            upstream_timer_var.reset(timer_token)
            structlog.contextvars.clear_contextvars()
