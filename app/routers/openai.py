"""The OpenAI-compatible surface: vLLM's own routes, relayed (``services.passthrough``).

The official ``openai`` client and anything that talks to vLLM directly work unchanged: request and
response bodies are vLLM's. Bodies are read raw (no pydantic model: the passthrough forwards the
client's bytes), so the OpenAPI document describes them loosely.

The four POST routes are plain ASGI endpoints (``routes``), not FastAPI routes: FastAPI's request
handling (dependency solving, query parsing, an exit stack, an exception wrapper) cost about a sixth
of a passthrough call's CPU (py-spy, ``benchmarks/passthrough.py``) and gave them nothing. The
gateway's error handlers still apply (Starlette's ExceptionMiddleware wraps every route), and
``openapi_paths`` describes them in the document.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from app.routers.deps import PassthroughDep, cancel_on_disconnect, read_routing_hints
from app.routers.direct import PlainRoute
from app.routers.schemas import REF, ModelList, OpenAIErrorResponse, error_responses
from app.services.passthrough import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, Endpoint, PassthroughService
from app.services.passthrough.relay import error_event
from app.shutdown import grace_left

router = APIRouter(tags=["openai"])

_BODY = {"content": {"application/json": {"schema": {"type": "object", "additionalProperties": True}}},
         "required": True}
_ANSWER = {"content": {"application/json": {"schema": {"type": "object", "additionalProperties": True}},
                       "text/event-stream": {"schema": {"type": "string"}}},
           "description": "vLLM's answer, as vLLM sends it (a stream when the request says stream: true)"}
_ERRORS = {
    401: "an API key is required and was missing or not valid (unauthorized)",
    403: "the API key lacks the openai scope or may not use the model (scope_missing, model_not_allowed)",
    400: "invalid JSON, or a parameter vLLM would silently ignore (guided_json & co.: unsupported_parameter); "
         "or vLLM refused the request (its own error, as it wrote it)",
    404: "a model no upstream serves (model_not_found, with the served ones in available)",
    413: "the request body is over the gateway's limit (payload_too_large)",
    422: "vLLM refused the request (its own error, as it wrote it)",
    429: "every upstream serving the model is saturated, or the gateway's queue is full (upstream_overloaded)",
    500: "a bug in the gateway (internal_error); the request id is in the logs",
    502: "the upstream failed or sent something unusable",
    503: "no upstream can be reached",
    504: "the upstream did not answer in time",
}


def openapi_paths() -> dict[str, Any]:
    """The POST routes' part of the OpenAPI document."""
    error = {"application/json": {"schema": {"$ref": REF.format(model="OpenAIErrorResponse")}}}
    retry = {"Retry-After": {"description": "seconds to wait, when the error is retryable",
                             "schema": {"type": "integer"}}}
    paths: dict[str, Any] = {}
    for endpoint, summary in _SUMMARIES.items():
        responses: dict[str, Any] = {"200": _ANSWER}
        for status, description in _ERRORS.items():
            responses[str(status)] = {"description": description, "content": error}
            if status in (429, 502, 503, 504):
                responses[str(status)]["headers"] = retry
        paths[endpoint.path] = {"post": {"tags": ["openai"], "summary": summary, "operationId": endpoint.route,
                                         "requestBody": _BODY, "responses": responses}}
    return paths


class RelayResponse(Response):
    """A stream relayed as it comes, stopped the moment the client goes away: the relay (and with it
    the upstream request, which makes vLLM abort the sequence) is cancelled on ``http.disconnect``,
    not only at the next failed write. When the server shuts down, a stream still going after
    ``shutdown_grace_s`` ends with a ``shutting_down`` error event and ``[DONE]``."""

    media_type = "text/event-stream"
    _HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]

    def __init__(self, chunks: AsyncIterator[bytes], grace_s: float, request_id: str | None,
                 abandon: Callable[[], Awaitable[None]] | None = None) -> None:
        self.status_code = 200  # no Content-Length: it is a stream
        self.background = None
        self.raw_headers = list(self._HEADERS)
        self.chunks = chunks
        self.abandon = abandon
        self.grace_s = grace_s
        self.request_id = request_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def start() -> None:
            nonlocal started
            started = True
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})

        async def pump() -> None:
            await start()
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        async def grace() -> None:
            await grace_left(self.grace_s)

        relay, watcher, stopper = (asyncio.ensure_future(pump()), asyncio.ensure_future(watch()),
                                   asyncio.ensure_future(grace()))
        try:
            await asyncio.wait({relay, watcher, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (relay, watcher, stopper):
                task.cancel()
            await asyncio.gather(relay, watcher, stopper, return_exceptions=True)
            await self.chunks.aclose()  # cut short: the relay's cleanup closes the upstream
            if self.abandon is not None:
                await self.abandon()  # never started: the same cleanup, from outside
        if stopper.done() and not stopper.cancelled() and not (relay.done() and not relay.cancelled()):
            if not started:
                await start()
            await send({"type": "http.response.body", "more_body": False, "body": error_event(
                "the gateway is shutting down; retry the request", "shutting_down", 503, self.request_id)})
            return
        if relay.done() and not relay.cancelled() and relay.exception() is not None:
            raise relay.exception()


async def _relay(endpoint: Endpoint, request: Request, service: PassthroughService) -> Response:
    read_routing_hints(request)
    raw = await request.body()
    answer = await cancel_on_disconnect(request, service.call(endpoint, raw, request.headers))
    if answer.chunks is not None:
        return RelayResponse(answer.chunks, service.settings.shutdown_grace_s,
                             request.scope.get("state", {}).get("request_id"), answer.abandon)
    return Response(answer.body, status_code=answer.status, media_type=answer.media_type)


class _Endpoint:
    """One POST route as a plain ASGI app (Starlette calls it with the scope as is)."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        response = await _relay(self.endpoint, request, request.app.state.passthrough)
        await response(scope, receive, send)


_SUMMARIES = {
    CHAT: "Chat completions, as vLLM's (stream or not)",
    COMPLETIONS: "Text completions, as vLLM's (stream or not)",
    EMBEDDINGS: "Embeddings, as vLLM's",
    RESPONSES: "The Responses API, relayed when an upstream serves it",
}
routes = [PlainRoute(e.path, _Endpoint(e), methods=["POST"]) for e in _SUMMARIES]


@router.get("/v1/models", response_model=ModelList, responses=error_responses(
    502, 503, 504, model=OpenAIErrorResponse, _503="no upstream can be reached (upstream_unavailable)"))
async def models(service: PassthroughDep) -> dict[str, Any]:
    """Every upstream's served models, joined (refreshed on every call)."""
    return await service.models()
