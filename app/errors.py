"""Typed errors. Every one maps to the single JSON error shape::

    {"error": {"type": ..., "message": ..., "request_id": ..., **details}}

Services raise these; ``app.main`` installs the handlers that render them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class VGateError(Exception):
    """A gateway error: its HTTP status, ``type`` and message become the one JSON error shape."""
    status_code: int = 500
    type: str = "internal_error"
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        type: str | None = None,
        retry_after_s: float | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        if type is not None:
            self.type = type
        self.retry_after_s = retry_after_s
        self.details = details

    def body(self) -> dict[str, Any]:
        """The error object of the JSON answer: type, message, the retry hint and any details."""
        err: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.retryable:
            err["retryable"] = True
        if self.retry_after_s is not None:
            err["retry_after_s"] = self.retry_after_s
        err.update(self.details)
        return err

    def headers(self) -> dict[str, str]:
        """HTTP headers for the answer: ``Retry-After`` when a retry time is known."""
        if self.retry_after_s is not None:
            return {"Retry-After": str(max(1, round(self.retry_after_s)))}
        return {}


# --- the caller's fault (4xx) ---------------------------------------------


class InvalidRequestError(VGateError):
    """The request is invalid (422 ``invalid_request``); the message says what to fix."""
    status_code = 422
    type = "invalid_request"


class SignatureError(InvalidRequestError):
    """A signature that cannot be parsed or uses a type outside the whitelist (422 ``invalid_signature``)."""
    type = "invalid_signature"


class SchemaTooComplexError(SignatureError):
    """A signature whose output schema is past a budget that bounds vLLM's grammar compilation."""

    type = "schema_too_complex"


class NotFoundError(VGateError):
    """Something named in the request does not exist (404)."""
    status_code = 404
    type = "not_found"


# --- the upstream's fault (5xx, with a retry hint) ---------------------------


class UpstreamError(VGateError):
    """The upstream answered with an error or something we could not use."""

    status_code = 502
    type = "upstream_error"
    retryable = True

    def __init__(self, message: str, *, retry_after_s: float | None = 1.0, **kw: Any) -> None:
        super().__init__(message, retry_after_s=retry_after_s, **kw)


class UpstreamUnavailableError(UpstreamError):
    """Could not reach the upstream, or it is overloaded (429/503 after retries)."""

    status_code = 503
    type = "upstream_unavailable"


class OverloadedError(UpstreamError):
    """Every upstream that serves the model is saturated, or the gateway's queue for it is full (or
    cannot start the call before its deadline): a 429 at once, with ``Retry-After``, rather than
    piling more onto vLLM's own queue. ``reason`` (queue_full, deadline, saturated, upstream) is a
    bounded label value."""

    status_code = 429
    type = "upstream_overloaded"

    def __init__(self, message: str, *, reason: str, retry_after_s: float | None = 1.0, **kw: Any) -> None:
        super().__init__(message, retry_after_s=retry_after_s, **kw)
        self.reason = reason


class UpstreamTimeoutError(UpstreamError):
    """The upstream did not answer in time (504 ``upstream_timeout``)."""
    status_code = 504
    type = "upstream_timeout"


class UpstreamAuthError(UpstreamError):
    """The upstream refused the gateway's own credentials (401/403): the gateway is misconfigured,
    and a retry by the client cannot help."""

    type = "upstream_auth_error"
    retryable = False

    def __init__(self, message: str, **kw: Any) -> None:
        super().__init__(message, retry_after_s=None, **kw)


class UpstreamBadRequestError(VGateError):
    """The upstream refused the request as invalid (e.g. prompt longer than the context)."""

    status_code = 400
    type = "upstream_bad_request"


class OutputValidationError(UpstreamError):
    """The model's output does not match the declared signature. Carries the raw text."""

    type = "output_validation_error"


class OutputTruncatedError(UpstreamError):
    """The model hit max_tokens before finishing its structured output."""

    type = "output_truncated"
    retryable = False

    def __init__(self, message: str, **kw: Any) -> None:
        super().__init__(message, retry_after_s=None, **kw)


# --- pydantic errors, as clients see them ------------------------------------


def clean_errors(errors: Iterable[Mapping[str, Any]], limit: int = 20) -> list[dict[str, Any]]:
    """pydantic error dicts reduced to JSON-safe ``{"loc", "msg", "type"}`` (no input echo, no
    exception objects in ``ctx``, no docs URL)."""
    out = []
    for e in errors:
        if len(out) == limit:
            break
        loc = [p if isinstance(p, (str, int)) else str(p) for p in e.get("loc", ())]
        out.append({"loc": loc, "msg": e.get("msg"), "type": e.get("type")})
    return out


def summarize_errors(errors: list[dict[str, Any]], limit: int = 3, root: str = "(root)") -> str:
    """One line for a list of ``{"loc", "msg"}`` errors."""
    parts = [f"'{'.'.join(map(str, e['loc'])) or root}': {e['msg']}" for e in errors[:limit]]
    if len(errors) > limit:
        parts.append(f"and {len(errors) - limit} more")
    return "; ".join(parts)
