"""``Annotated`` dependency aliases: routers declare what they need, the lifespan provides it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request

from app.errors import VGateError
from app.metrics import Metrics
from app.services.agent import AgentService
from app.services.lm import LMClient
from app.services.predict import PredictService
from app.services.programs import Program
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
RequestIdDep = Annotated[str, Depends(get_request_id)]


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
