"""A route FastAPI documents but does not run: its handler validates the body and serialises the
answer with the route's own fields, and calls the endpoint's ``direct`` function, no dependency solving.

For the hot routes (``POST /predict``), where FastAPI's per-request machinery (solving a tree of
``Depends``, its exit stacks, telemetry and operation hooks) cost about a fifth of the gateway's CPU per
request (cProfile, ``benchmarks/compare.py``'s memory section) and gave nothing a plain call does not.
The OpenAPI document is FastAPI's, from the endpoint's signature as declared; the body is read as JSON
whatever its Content-Type (as ``JSONBodyRoute``); a bad body is the same ``RequestValidationError``
FastAPI raises (so the same 400/422 answers), and the answer is validated against ``response_model`` and
serialised as FastAPI would (``exclude_unset`` and all): a client cannot tell the two apart.

An endpoint opts in with ``@direct(fn)``: ``fn(request, body)`` does the work, with the validated body,
and takes what the declared dependencies would give from ``request.app.state`` itself.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from fastapi import Request, Response
from fastapi.dependencies.utils import get_missing_field_error
from fastapi.exceptions import HTTPException, RequestValidationError, ResponseValidationError

from app.routers.json_body import JSONBodyRoute

F = TypeVar("F", bound=Callable[..., Any])
DirectCall = Callable[[Request, Any], Awaitable[Any]]


def direct(call: DirectCall) -> Callable[[F], F]:
    """Mark an endpoint (declared for the document) as run by ``call(request, body)`` under ``DirectRoute``."""
    def mark(endpoint: F) -> F:
        endpoint.direct_call = call  # type: ignore[attr-defined]
        return endpoint

    return mark


def parse_json_body(raw: bytes) -> Any:
    """The body as FastAPI reads a JSON one: invalid JSON is its ``json_invalid`` validation error,
    bytes that are not UTF-8 its 400 (the gateway's handlers answer both with invalid_json)."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error",
                                       "input": {}, "ctx": {"error": exc.msg}}], body=exc.doc) from exc
    except UnicodeDecodeError as exc:
        raise HTTPException(status_code=400, detail="There was an error parsing the body") from exc


class DirectRoute(JSONBodyRoute):
    """A JSON-body route whose endpoint carries a ``direct_call`` (see ``direct``); any other runs as FastAPI's."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The hand-written handler when the endpoint asks for one, else FastAPI's."""
        call: DirectCall | None = getattr(self.endpoint, "direct_call", None)
        body_field, response_field = self.body_field, self.response_field
        if call is None or body_field is None:
            return super().get_route_handler()
        exclude_unset = self.response_model_exclude_unset
        status_code = self.status_code or 200

        async def handler(request: Request) -> Response:
            raw = await request.body()
            if raw:
                body, errors = body_field.validate(parse_json_body(raw), {}, loc=("body",))
            else:
                body, errors = None, [get_missing_field_error(loc=("body",))]
            if errors:
                raise RequestValidationError(errors, body=raw)
            content = await call(request, body)
            if isinstance(content, Response) or response_field is None:
                return content
            value, errors = response_field.validate(content, {}, loc=("response",))
            if errors:
                raise ResponseValidationError(errors, body=content)
            return Response(response_field.serialize_json(value, exclude_unset=exclude_unset),
                            status_code=status_code, media_type="application/json")

        return handler
