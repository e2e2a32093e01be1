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
from app.services.passthrough import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, Answer, Endpoint

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
    not only at the next failed write."""

    media_type = "text/event-stream"
    _HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:  # no Content-Length: it is a stream
        self.status_code = 200
        self.background = None
        self.raw_headers = list(self._HEADERS)
        self.chunks = chunks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def pump() -> None:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        relay, watcher = asyncio.ensure_future(pump()), asyncio.ensure_future(watch())
        try:
            await asyncio.wait({relay, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (relay, watcher):
                task.cancel()
            await asyncio.gather(relay, watcher, return_exceptions=True)
            await self.chunks.aclose()  # never started, or cut short: the upstream is closed either way
        if relay.done() and not relay.cancelled() and relay.exception() is not None:
            raise relay.exception()


def _response(answer: Answer) -> Response:
    if answer.chunks is not None:
        return RelayResponse(answer.chunks)
    return Response(answer.body, status_code=answer.status, media_type=answer.media_type)


async def _relay(endpoint: Endpoint, request: Request, service: Any) -> Response:
    raw = await request.body()
    answer = await cancel_on_disconnect(request, service.call(endpoint, raw, request.headers))
    return _response(answer)


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
