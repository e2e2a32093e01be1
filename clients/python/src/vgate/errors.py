"""Typed exceptions, each carrying the gateway's error body.

The gateway answers every error in one shape, ``{"error": {"type", "message", "request_id", ...}}``;
``error_from_response`` turns it into the subclass its status (and, for a few, its type) names.
"""

from __future__ import annotations

from typing import Any

import httpx


class VGateError(Exception):
    """Any error the gateway answered, or a failure to reach it (``ConnectionError``).

    ``status``: the HTTP status (None when there was none: a batch item's error, a job's, a
    transport failure). ``type`` and ``message``: the gateway's. ``body``: the JSON the gateway sent,
    ``{"error": {...}}`` (``error``: the inner dict, where details such as ``available`` or ``limit`` are).
    ``request_id``: the request's id, which is in every gateway log line about it.
    """

    def __init__(self, message: str, *, status: int | None = None, type: str | None = None,
                 body: dict[str, Any] | None = None, request_id: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type or "error"
        self.body = body if body is not None else {"error": {"type": self.type, "message": message}}
        self.request_id = request_id
        self.retry_after = retry_after

    @property
    def error(self) -> dict[str, Any]:
        """The gateway's error object (the body's "error"), or {} when the body has none."""
        inner = self.body.get("error") if isinstance(self.body, dict) else None
        return inner if isinstance(inner, dict) else {}

    @property
    def retryable(self) -> bool:
        """The gateway's word that the same request may succeed later."""
        return bool(self.error.get("retryable"))

    def __str__(self) -> str:
        head = f"{self.status} {self.type}" if self.status else self.type
        tail = f" (request id {self.request_id})" if self.request_id else ""
        return f"{head}: {self.message}{tail}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, type={self.type!r}, message={self.message!r})"


class InvalidRequest(VGateError):
    """400, 413 or 422: the request is wrong (the message says how)."""


class AuthenticationError(VGateError):
    """401: an API key is required and was missing or not valid."""


class PermissionDenied(VGateError):
    """403: the API key may not use this route, model or tool."""


class NotFound(VGateError):
    """404: unknown program, model, tool, run or job."""


class Conflict(VGateError):
    """409: e.g. another agent run is using this session (session_busy)."""


class RateLimited(VGateError):
    """429: the key's limit or budget is reached, or the upstreams are saturated; ``retry_after`` in seconds."""


class InternalServerError(VGateError):
    """500: a bug in the gateway; ``request_id`` finds it in the logs."""


class UpstreamError(VGateError):
    """502, 503 or 504: the model server failed, was unreachable or too slow; ``retry_after`` in seconds."""


class OutputValidationError(UpstreamError):
    """The model's output did not match the signature (after the gateway's repairs): ``raw`` is its
    text, ``errors`` what was wrong with it."""

    @property
    def raw(self) -> str | None:
        """The model's raw text that failed validation, when the gateway returned it."""
        return self.error.get("raw")

    @property
    def errors(self) -> list[dict[str, Any]]:
        """The validation errors the gateway reported, one dict per problem."""
        return list(self.error.get("errors") or [])


class ConnectionError(VGateError):  # noqa: A001 - vgate.ConnectionError, as the brief names it
    """The gateway could not be reached, or the connection broke (no HTTP status)."""


class Timeout(ConnectionError):
    """The gateway did not answer within the client's timeout."""


class PredictionError(VGateError):
    """One failed item of a batch (``index``), with the error the gateway gave for it."""

    def __init__(self, index: int, error: dict[str, Any], *, request_id: str | None = None) -> None:
        super().__init__(str(error.get("message", "")), type=str(error.get("type", "error")),
                         body={"error": error}, request_id=request_id, retry_after=error.get("retry_after_s"))
        self.index = index

    def __str__(self) -> str:
        return f"item {self.index}: {super().__str__()}"

    def __repr__(self) -> str:
        return f"PredictionError(index={self.index}, type={self.type!r}, message={self.message!r})"


class JobFailed(VGateError):
    """A job (a long evaluation or optimization) ended as ``failed`` or ``cancelled``."""

    def __init__(self, job_id: str, status: str, error: dict[str, Any] | None) -> None:
        error = error or {"type": f"job_{status}", "message": f"the job was {status}"}
        super().__init__(str(error.get("message", "")), type=str(error.get("type", "error")),
                         body={"error": error}, request_id=error.get("request_id"))
        self.job_id = job_id
        self.job_status = status


class AgentError(VGateError):
    """An agent run that ended with an ``error`` event (raised by ``Agent.run``; ``Agent.stream``
    yields the event)."""


_BY_STATUS: dict[int, type[VGateError]] = {
    400: InvalidRequest, 413: InvalidRequest, 422: InvalidRequest,
    401: AuthenticationError, 403: PermissionDenied, 404: NotFound, 409: Conflict, 429: RateLimited,
    500: InternalServerError, 502: UpstreamError, 503: UpstreamError, 504: UpstreamError,
}


def error_class(status: int | None, type_: str | None) -> type[VGateError]:
    """The exception class for an HTTP status and error type (unknown 5xx: UpstreamError, 4xx: InvalidRequest)."""
    if type_ == "output_validation_error":
        return OutputValidationError
    if status is None:
        return VGateError
    return _BY_STATUS.get(status, UpstreamError if status >= 500 else InvalidRequest if status >= 400 else VGateError)


def _retry_after(error: dict[str, Any], headers: httpx.Headers | None) -> float | None:
    value = error.get("retry_after_s")
    if isinstance(value, (int, float)):
        return float(value)
    header = headers.get("retry-after") if headers is not None else None
    try:
        return float(header) if header else None
    except ValueError:
        return None  # an HTTP date: not what the gateway sends


def error_from_body(error: dict[str, Any], *, status: int | None = None, body: dict[str, Any] | None = None,
                    headers: httpx.Headers | None = None, cls: type[VGateError] | None = None) -> VGateError:
    """The typed exception for an error dict (``{"type", "message", ...}``)."""
    type_ = str(error.get("type") or "error")
    request_id = error.get("request_id") or (headers.get("x-request-id") if headers is not None else None)
    cls = cls or error_class(status, type_)
    return cls(str(error.get("message") or type_), status=status, type=type_, body=body or {"error": error},
               request_id=request_id, retry_after=_retry_after(error, headers))


def error_from_response(response: httpx.Response) -> VGateError:
    """The typed exception for an error response (read: ``response.content`` is there)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):  # not the gateway's shape: a proxy's page, say
        text = response.text.strip()[:500] or response.reason_phrase
        error = {"type": "http_error", "message": f"HTTP {response.status_code}: {text}"}
        body = {"error": error}
    return error_from_body(error, status=response.status_code, body=body, headers=response.headers)


def transport_error(exc: httpx.TransportError, url: str) -> ConnectionError:
    """An httpx transport failure as a vgate Timeout or ConnectionError naming the URL."""
    cls = Timeout if isinstance(exc, httpx.TimeoutException) else ConnectionError
    kind, type_ = ("timed out", "timeout") if cls is Timeout else ("failed", "connection_error")
    return cls(f"the request to {url} {kind}: {type(exc).__name__}: {exc}", type=type_)
