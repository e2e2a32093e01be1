"""The OpenAI-compatible surface: vLLM's own routes, relayed (``services.passthrough``).

The official ``openai`` client and anything that talks to vLLM directly work unchanged: request and
response bodies are vLLM's. Bodies are read raw (no pydantic model: the passthrough forwards the
client's bytes), so the OpenAPI document describes them loosely and points at OpenAI's reference.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from app.routers.deps import PassthroughDep, cancel_on_disconnect, routing_hints
from app.routers.schemas import ModelList, OpenAIErrorResponse, error_responses
from app.services.passthrough import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, Endpoint, PassthroughService
from app.services.passthrough.relay import error_event
from app.shutdown import stopping

router = APIRouter(tags=["openai"], dependencies=[Depends(routing_hints)])

_BODY = {"content": {"application/json": {"schema": {"type": "object", "additionalProperties": True}}},
         "required": True}
_ANSWER = {"content": {"application/json": {"schema": {"type": "object", "additionalProperties": True}},
                       "text/event-stream": {"schema": {"type": "string"}}},
           "description": "vLLM's answer, as vLLM sends it (a stream when the request says stream: true)"}
_ERRORS = error_responses(
    400, 404, 413, 422, 429, 502, 503, 504, model=OpenAIErrorResponse,
    _400="invalid JSON, or a parameter vLLM would silently ignore (guided_json & co.: unsupported_parameter)",
    _404="a model no upstream serves (model_not_found, with the served ones in available)",
    _429="every upstream serving the model is saturated, or the gateway's queue is full (Retry-After)",
)


class RelayResponse(Response):
    """A stream relayed as it comes, stopped the moment the client goes away: the relay (and with it
    the upstream request, which makes vLLM abort the sequence) is cancelled on ``http.disconnect``,
    not only at the next failed write. When the server shuts down, a stream still going after
    ``shutdown_grace_s`` ends with a ``shutting_down`` error event and ``[DONE]``."""

    media_type = "text/event-stream"
    _HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]

    def __init__(self, chunks: AsyncIterator[bytes], grace_s: float, request_id: str | None) -> None:
        self.status_code = 200  # no Content-Length: it is a stream
        self.background = None
        self.raw_headers = list(self._HEADERS)
        self.chunks = chunks
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
            await stopping().wait()
            await asyncio.sleep(self.grace_s)

        relay, watcher, stopper = (asyncio.ensure_future(pump()), asyncio.ensure_future(watch()),
                                   asyncio.ensure_future(grace()))
        try:
            await asyncio.wait({relay, watcher, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (relay, watcher, stopper):
                task.cancel()
            await asyncio.gather(relay, watcher, stopper, return_exceptions=True)
            await self.chunks.aclose()  # never started, or cut short: the upstream is closed either way
        if stopper.done() and not stopper.cancelled():
            if not started:
                await start()
            await send({"type": "http.response.body", "more_body": False, "body": error_event(
                "the gateway is shutting down; retry the request", "shutting_down", 503, self.request_id)})
            return
        if relay.done() and not relay.cancelled() and relay.exception() is not None:
            raise relay.exception()


async def _relay(endpoint: Endpoint, request: Request, service: PassthroughService) -> Response:
    raw = await request.body()
    answer = await cancel_on_disconnect(request, service.call(endpoint, raw, request.headers))
    if answer.chunks is not None:
        return RelayResponse(answer.chunks, service.settings.shutdown_grace_s,
                             request.scope.get("state", {}).get("request_id"))
    return Response(answer.body, status_code=answer.status, media_type=answer.media_type)


def _route(endpoint: Endpoint, summary: str):
    async def handler(request: Request, service: PassthroughDep) -> Response:
        return await _relay(endpoint, request, service)

    handler.__name__ = endpoint.route
    router.add_api_route(endpoint.path, handler, methods=["POST"], summary=summary, response_class=Response,
                         openapi_extra={"requestBody": _BODY}, responses={200: _ANSWER, **_ERRORS})


_route(CHAT, "Chat completions, as vLLM's (stream or not)")
_route(COMPLETIONS, "Text completions, as vLLM's (stream or not)")
_route(EMBEDDINGS, "Embeddings, as vLLM's")
_route(RESPONSES, "The Responses API, relayed when an upstream serves it")


@router.get("/v1/models", response_model=ModelList, responses=error_responses(
    502, 503, 504, model=OpenAIErrorResponse, _503="no upstream can be reached (upstream_unavailable)"))
async def models(service: PassthroughDep) -> dict[str, Any]:
    """Every upstream's served models, joined (refreshed on every call)."""
    return await service.models()
