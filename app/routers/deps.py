"""``Annotated`` dependency aliases: routers declare what they need, the lifespan provides it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request

from app.context import request_context
from app.errors import InvalidRequestError, VGateError
from app.metrics import Metrics
from app.services.agent import AgentService
from app.services.lm import LMClient
from app.services.passthrough import PassthroughService
from app.services.predict import PredictService
from app.services.programs import Program
from app.services.upstreams import PRIORITIES
from app.settings import Settings
from app.tools import ToolExecutor

T = TypeVar("T")


# Dependencies are `async def` on purpose: FastAPI runs plain-function dependencies in a thread
# pool, which cost ~22 % of the gateway's CPU per request (benchmarks/RESULTS.md).
def _state(name: str) -> Any:
    async def get(request: Request) -> Any:
        return getattr(request.app.state, name)

    return get


async def get_request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "")


SettingsDep = Annotated[Settings, Depends(_state("settings"))]
MetricsDep = Annotated[Metrics, Depends(_state("metrics"))]
LMDep = Annotated[LMClient, Depends(_state("lm"))]
PredictDep = Annotated[PredictService, Depends(_state("predict"))]
ProgramsDep = Annotated[dict[str, Program], Depends(_state("programs"))]
AgentDep = Annotated[AgentService, Depends(_state("agent"))]
ExecutorDep = Annotated[ToolExecutor, Depends(_state("tools"))]
PassthroughDep = Annotated[PassthroughService, Depends(_state("passthrough"))]
RequestIdDep = Annotated[str, Depends(get_request_id)]


PRIORITY_HEADER = "x-vgate-priority"
SESSION_HEADER = "x-vgate-session"
MAX_SESSION_CHARS = 256


async def routing_hints(request: Request) -> None:
    """The request's routing headers into its context: ``X-Vgate-Priority`` (interactive or batch;
    the LM client decides what the caller may have) and ``X-Vgate-Session`` (its calls stay on one
    upstream, for vLLM's prefix cache)."""
    ctx = request_context.get()
    headers = request.headers
    priority = headers.get(PRIORITY_HEADER)
    if priority is not None:
        priority = priority.strip().lower()
        if priority not in PRIORITIES:
            raise InvalidRequestError(f"{PRIORITY_HEADER} must be one of {list(PRIORITIES)}, got {priority!r}",
                                      status_code=400, type="invalid_header")
    session = headers.get(SESSION_HEADER)
    if ctx is not None:
        ctx.priority = priority
        ctx.session = session[:MAX_SESSION_CHARS] if session else None


class ClientDisconnected(VGateError):
    status_code = 499
    type = "client_disconnected"


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run ``work`` but cancel it as soon as the client goes away (as vLLM's own server does):
    a dropped batch must not keep hundreds of sequences busy on the GPU."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watcher.cancel()
        raise
    if not task.done():
        task.cancel()
        await asyncio.wait({task})  # let it unwind; a cancellation of this request still propagates
        raise ClientDisconnected("client closed the connection; work cancelled")
    watcher.cancel()
    return task.result()
