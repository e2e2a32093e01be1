"""An upstream's answer or failure → the gateway's typed error, and whether a retry may help.

Clients see clean messages: the upstream's status and the request id, never the upstream's own
text for a 5xx (a vLLM 500 names internal hosts and paths) — that goes to the log line only.
vLLM's 4xx messages about the client's own request (context too long, a bad parameter) stay
visible, since they tell the client what to fix. A 401/403 is the gateway's misconfiguration.
"""

from __future__ import annotations

import json

import aiohttp
import httpx
import structlog

from app.errors import (
    NotFoundError,
    OverloadedError,
    UpstreamAuthError,
    UpstreamBadRequestError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
    VGateError,
)

log = structlog.get_logger("vgate.lm")

MAX_CLIENT_MESSAGE_CHARS = 1000  # a 4xx message passed on to the client
MAX_LOGGED_BODY_CHARS = 2000


class AttemptFailed(Exception):
    """One failed attempt: whether to retry, why, and the error to raise if we stop."""

    def __init__(self, error: VGateError, *, retry: bool, reason: str, retry_after: float | None = None,
                 health: bool = False):
        super().__init__(error.message)
        self.error = error
        self.retry = retry
        self.reason = reason
        self.retry_after = retry_after
        self.health = health  # says the upstream is unwell (its breaker hears of it), not just busy
        self.failover = False  # another upstream can take the retry: no backoff before it


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header, or None when absent or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # HTTP-date form: fall back to our own backoff


def upstream_message(body: bytes) -> str:
    """vLLM's error body is {"error": {"message", ...}} (older: flat {"message"})."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:MAX_LOGGED_BODY_CHARS].decode("utf-8", "replace")
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])
        if isinstance(err, str):
            return err
    return body[:MAX_LOGGED_BODY_CHARS].decode("utf-8", "replace")


def status_failure(status: int, body: bytes, retry_after: float | None, *, model: str) -> AttemptFailed:
    """What an upstream's error status means for the attempt: the error to raise and whether to retry."""
    msg = upstream_message(body)
    log.warning("upstream_error_response", upstream_status=status, upstream_message=msg[:MAX_LOGGED_BODY_CHARS])
    if status in (400, 413, 422):  # about the client's own request: it says what to fix
        return AttemptFailed(UpstreamBadRequestError(msg[:MAX_CLIENT_MESSAGE_CHARS], upstream_status=status),
                             retry=False, reason=str(status))
    if status == 404:
        return AttemptFailed(NotFoundError(f"model {model!r} is not served by the upstream", type="model_not_found"),
                             retry=False, reason="404")
    if status in (401, 403):
        return AttemptFailed(UpstreamAuthError(f"the upstream refused the gateway's credentials ({status}); "
                                               "the gateway is misconfigured", upstream_status=status),
                             retry=False, reason=str(status))
    if status == 429:
        return AttemptFailed(OverloadedError("upstream is overloaded (429)", reason="upstream",
                                             retry_after_s=retry_after or 1.0, upstream_status=status),
                             retry=True, reason="429", retry_after=retry_after)
    if status == 503:
        return AttemptFailed(UpstreamUnavailableError("upstream unavailable (503)", retry_after_s=retry_after or 1.0,
                                                      upstream_status=status),
                             retry=True, reason="503", retry_after=retry_after, health=True)
    if status == 504:
        return AttemptFailed(UpstreamTimeoutError("upstream timed out (504)", upstream_status=status),
                             retry=True, reason="504", retry_after=retry_after, health=True)
    return AttemptFailed(UpstreamError(f"upstream error ({status})", upstream_status=status),
                         retry=status == 502, reason=str(status), retry_after=retry_after, health=status >= 500)


def dropped(exc: BaseException) -> bool:
    """A connection the server dropped or reset. httpx-aiohttp maps aiohttp's ServerDisconnectedError,
    ClientOSError and resets to ``httpx.ConnectTimeout`` (its map's entry for ClientConnectionError):
    not a timeout, and not a server that is down (a stale keep-alive connection, a server killed
    mid-answer). A real connect timeout comes as ``httpx.TimeoutException``, a refusal as ConnectError."""
    cause = exc.__cause__
    return isinstance(exc, httpx.ConnectTimeout) and isinstance(cause, aiohttp.ClientConnectionError) and \
        not isinstance(cause, (aiohttp.ServerTimeoutError, aiohttp.ClientConnectorError))


def transport_failure(exc: Exception, upstream: str) -> AttemptFailed:
    # Messages go to API clients: no internal addresses in them (the log line has the upstream).
    """What a transport failure means for the attempt: the error (no internal address in it) and whether to retry."""
    log.info("upstream_transport_error", upstream=upstream, error=f"{type(exc).__name__}: {exc}")
    if dropped(exc):
        return AttemptFailed(UpstreamError("upstream connection dropped", type="upstream_disconnected"),
                             retry=True, reason="disconnect", health=True)
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return AttemptFailed(UpstreamUnavailableError("cannot reach the upstream model server"),
                             retry=True, reason="connect", health=True)
    if isinstance(exc, httpx.TimeoutException):
        return AttemptFailed(UpstreamTimeoutError("upstream did not answer in time"), retry=True, reason="timeout",
                             health=True)
    return AttemptFailed(UpstreamError(f"upstream connection failed ({type(exc).__name__})"),
                         retry=True, reason="disconnect", health=True)


def malformed(what: str, excerpt: str | None = None) -> UpstreamError:
    """The upstream sent something unusable; the excerpt is logged, not shown to the client."""
    if excerpt is not None:
        log.warning("upstream_malformed", what=what, excerpt=excerpt[:200])
    return UpstreamError(f"upstream sent {what}", type="upstream_malformed")
