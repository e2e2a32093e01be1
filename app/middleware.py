"""Pure ASGI middleware (no BaseHTTPMiddleware: it buffers and costs a task per request).

For every HTTP request it
- takes or makes the request id, binds it to structlog's context so every log line carries it;
- measures the time spent waiting on the upstream (``app.context.UpstreamTimer``) and reports the
  gateway's own overhead in the ``X-Vgate-Overhead-Ms`` header and a histogram;
- counts requests by route template, method and status; logs one access line.
"""

from __future__ import annotations

import json
import time

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.context import RequestContext, request_context
from app.errors import VGateError
from app.logging import sanitize_request_id
from app.metrics import Metrics

log = structlog.get_logger("vgate.access")

KNOWN_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
REQUEST_ID_HEADER = b"x-request-id"
OVERHEAD_HEADER = b"x-vgate-overhead-ms"


async def send_error(send: Send, status: int, type: str, message: str, request_id: str | None, *,
                     path: str = "", headers: dict[str, str] | None = None, **details) -> None:
    """An error response in the gateway's one shape, from middleware (outside FastAPI's handlers);
    on the OpenAI-compatible routes with the ``param`` and ``code`` their clients read too."""
    error = {"type": type, "message": message, **details, "request_id": request_id}
    if path.startswith("/v1/"):
        error.setdefault("param", None)
        error.setdefault("code", status)
    body = json.dumps({"error": error}).encode()
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *extra]})
    await send({"type": "http.response.body", "body": body})


class RequestContextMiddleware:
    """Pure-ASGI middleware: request id, request context, access metrics and log line, overhead header."""
    def __init__(self, app: ASGIApp, metrics: Metrics, access_log: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log  # the request line is logged (INFO)
        self._children: dict[tuple[str, str, int], tuple] = {}  # bounded: route templates, methods, statuses

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
        ctx = RequestContext(request_id)
        timer = ctx.timer
        ctx_token = request_context.set(ctx)
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
            await send_error(send_wrapper, 500, "internal_error", "internal error; the request id is in the logs",
                             request_id, path=scope.get("path", ""))
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
            key = (route, method, status)
            children = self._children.get(key)
            if children is None:  # labels() costs a lock and a dict build per call: once per key
                m = self.metrics
                children = self._children[key] = (m.requests.labels(route=route, method=method, status=str(status)),
                                                  m.request_duration.labels(route=route),
                                                  m.overhead.labels(route=route))
            children[0].inc()
            children[1].observe(elapsed)
            children[2].observe(overhead)
            if self.access_log:  # else the line would be dropped: do not build it
                log.info(
                    "request",
                    method=method,
                    path=scope.get("path"),
                    route=route,
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                    overhead_ms=round(overhead * 1000, 2),
                )
            request_context.reset(ctx_token)
            structlog.contextvars.clear_contextvars()


class BodyLimitMiddleware:
    """Refuses a request body over ``max_bytes`` with a 413, before any of it reaches a route.

    A declared ``Content-Length`` over the limit is refused without reading the body; a body with
    one (and no ``Transfer-Encoding``) cannot run past it, as the HTTP server enforces the framing.
    Any other body — chunked, ``Transfer-Encoding`` beside a ``Content-Length`` (which wins over
    it), or no framing header at all (HTTP/2) — is read up to the limit and replayed to the app;
    one byte more is a 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length: bytes | None = None
        framed_by_length = True
        for k, v in scope["headers"]:
            if k == b"content-length":
                length = v
            elif k == b"transfer-encoding":
                framed_by_length = False
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = None  # the HTTP server refuses a malformed Content-Length itself
            if declared is not None and declared > self.max_bytes:
                await self._refuse(scope, send)
                return
        if length is not None and framed_by_length:
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break  # a disconnect: let the app see it
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(scope, send)
                return
            if not message.get("more_body", False):
                break
        replay = iter(messages)

        async def receive_replayed() -> Message:
            return next(replay, None) or await receive()

        await self.app(scope, receive_replayed, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        await send_error(send, 413, "payload_too_large",
                         f"the request body exceeds the gateway's limit of {self.max_bytes} bytes "
                         "(VGATE_MAX_REQUEST_BODY_BYTES)",
                         scope.get("state", {}).get("request_id"), path=scope.get("path", ""),
                         limit_bytes=self.max_bytes)


OPEN_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/openapi.json"})
SCOPE_BY_PREFIX = (("/v1/", "openai"), ("/predict", "predict"), ("/agent", "agent"), ("/tools", "tools"),
                   ("/evaluate", "predict"), ("/jobs", "predict"), ("/optimize", "admin"),
                   ("/admin", "admin"), ("/metrics", "metrics"))


class AccessMiddleware:
    """API keys, when configured: the caller's key (``Authorization: Bearer`` or ``x-api-key``), the
    scope its route needs, and its request limits (rpm, tpm, concurrency, budgets), before anything
    else runs; a 401, 403 or 429 in the one error shape, and what is left of each limit in the
    answer's headers. Liveness, readiness and the API's documents stay open; /metrics needs the
    metrics (or admin) scope unless ``metrics_public``. The key's id (never the key) is bound to every log line."""

    def __init__(self, app: ASGIApp, keyring, meter, metrics_public: bool = False) -> None:
        self.app = app
        self.keyring = keyring
        self.meter = meter
        self.metrics_public = metrics_public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keyring.enabled:
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        needed = None
        open_path = path in OPEN_PATHS or path.startswith("/docs/") or (path == "/metrics" and self.metrics_public)
        if not open_path:
            needed = next((s for prefix, s in SCOPE_BY_PREFIX if path.startswith(prefix)), None)
        if needed is None:  # open, or no route there (a 404 either way)
            await self.app(scope, receive, send)
            return
        authorization = api_key = None
        for k, v in scope["headers"]:
            if k == b"authorization":
                authorization = v.decode("latin-1")
            elif k == b"x-api-key":
                api_key = v.decode("latin-1")
        try:
            principal = await self.keyring.authenticate(authorization, api_key)
            principal.require(needed)
            admission = await self.meter.admit(principal)
        except VGateError as exc:
            await send_error(send, exc.status_code, exc.type, exc.message, scope.get("state", {}).get("request_id"),
                             path=path, headers=exc.headers(), **exc.details)
            return
        ctx = request_context.get()
        if ctx is not None:
            ctx.principal = principal
        structlog.contextvars.bind_contextvars(key_id=principal.id)
        if admission is None:
            await self.app(scope, receive, send)
            return
        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":  # what is left once this request's calls count
                message["headers"] = [*message.get("headers", []), *admission.headers(ctx)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_limits)
        finally:
            self.meter.leave(principal, admission)  # no await: a cancelled request frees its slot too
