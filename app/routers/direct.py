"""Routes FastAPI documents but does not run: a hand-written handler validates the body and serialises
the answer with the route's own fields, and calls the endpoint's ``direct`` function.

For the hot routes (``POST /predict``), where FastAPI's per-request machinery cost about a third of the
gateway's CPU per request (cProfile; benchmarks/RESULTS.md section 9) and gave nothing a plain call does
not: solving a tree of ``Depends``, two exit stacks, a second exception wrapper, telemetry and operation
hooks, and matching the request against every route of every included router before it.

- The OpenAPI document is FastAPI's, from the endpoint's signature as declared.
- The body is read as JSON whatever its Content-Type (as ``json_body.JSONBodyRoute``); a bad body is the
  ``RequestValidationError`` FastAPI raises (so the same 400/422 answers); the answer is validated against
  ``response_model`` and serialised as FastAPI would (``exclude_unset`` and all). A client cannot tell.
- An endpoint opts in with ``@direct(fn)``: ``fn(request, body)`` does the work with the validated body,
  and takes what the declared dependencies would give from ``request.app.state`` itself.
- ``head_routes`` gives the handlers as plain routes to put at the head of the app's route list, matched
  and run before FastAPI's. FastAPI's routes stay for the document and answer any other method; were the
  head routes left out, they would answer the same requests the same way, through FastAPI's machinery.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.dependencies.utils import get_missing_field_error
from fastapi.exceptions import HTTPException, RequestValidationError, ResponseValidationError
from fastapi.routing import APIRoute
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

F = TypeVar("F", bound=Callable[..., Any])
DirectCall = Callable[[Request, Any], Awaitable[Any]]
Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def direct(call: DirectCall) -> Callable[[F], F]:
    """Mark an endpoint (declared for the document) as run by ``call(request, body)``."""
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


def direct_handler(route: APIRoute) -> Handler | None:
    """The hand-written handler of a route whose endpoint was marked with ``direct``; None for any other."""
    call: DirectCall | None = getattr(route.endpoint, "direct_call", None)
    body_field, response_field = route.body_field, route.response_field
    if call is None or body_field is None:
        return None
    exclude_unset = route.response_model_exclude_unset
    status_code = route.status_code or 200

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


class PlainRoute(Route):
    """A Starlette route that puts itself in the scope when it matches, even by path alone (a 405), as
    FastAPI's routes do: RequestContextMiddleware labels the request's metrics with ``scope["route"].path``."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        """Starlette's match, with ``route`` in the child scope."""
        match, child = super().matches(scope)
        if match != Match.NONE:
            child["route"] = self
        return match, child


class _HeadEndpoint:
    """A direct handler as a plain ASGI app: no exit stacks, no second exception wrapper (errors go to
    the app's ExceptionMiddleware, which answers them with the same handlers)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handler(Request(scope, receive, send))
        await response(scope, receive, send)


def head_routes(router: APIRouter) -> list[Route]:
    """Plain routes for the router's direct endpoints, to be matched before the included routers.
    The router must be included without a prefix (the paths are its own)."""
    out = []
    for route in router.routes:
        handler = direct_handler(route) if isinstance(route, APIRoute) else None
        if handler is not None:
            out.append(PlainRoute(route.path, _HeadEndpoint(handler), methods=list(route.methods)))
    return out
