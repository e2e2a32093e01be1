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
from app.services.jobs import JobService
from app.services.keys import KeyAdmin
from app.services.limits import Meter
from app.services.lm import LMClient
from app.services.passthrough import PassthroughService
from app.services.predict import PredictService
from app.services.programs import ProgramRegistry, ProgramRunner
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


def request_id_of(request: Request) -> str:
    """The request's id, as the middleware set it."""
    return request.scope.get("state", {}).get("request_id", "")


async def get_request_id(request: Request) -> str:
    """The request's id, as the middleware set it (as a dependency)."""
    return request_id_of(request)


SettingsDep = Annotated[Settings, Depends(_state("settings"))]
MetricsDep = Annotated[Metrics, Depends(_state("metrics"))]
LMDep = Annotated[LMClient, Depends(_state("lm"))]
PredictDep = Annotated[PredictService, Depends(_state("predict"))]
ProgramsDep = Annotated[ProgramRegistry, Depends(_state("programs"))]
RunnerDep = Annotated[ProgramRunner, Depends(_state("runner"))]
AgentDep = Annotated[AgentService, Depends(_state("agent"))]
ExecutorDep = Annotated[ToolExecutor, Depends(_state("tools"))]
PassthroughDep = Annotated[PassthroughService, Depends(_state("passthrough"))]
RequestIdDep = Annotated[str, Depends(get_request_id)]
KeysDep = Annotated[KeyAdmin, Depends(_state("keys"))]
MeterDep = Annotated[Meter, Depends(_state("meter"))]
JobsDep = Annotated[JobService, Depends(_state("jobs"))]


PRIORITY_HEADER = "x-vgate-priority"
SESSION_HEADER = "x-vgate-session"
MAX_SESSION_CHARS = 256


def read_routing_hints(request: Request) -> None:
    """The request's routing headers into its context: ``X-Vgate-Priority`` (interactive or batch;
    the LM client decides what the caller may have) and ``X-Vgate-Session`` (its calls stay on one
    upstream, for vLLM's prefix cache)."""
    headers = request.headers
    priority = headers.get(PRIORITY_HEADER)
    session = headers.get(SESSION_HEADER)
    if priority is None and session is None:
        return
    if priority is not None:
        priority = priority.strip().lower()
        if priority not in PRIORITIES:
            raise InvalidRequestError(f"{PRIORITY_HEADER} must be one of {list(PRIORITIES)}, got {priority!r}",
                                      status_code=400, type="invalid_header")
    ctx = request_context.get()
    if ctx is not None:
        ctx.priority = priority
        ctx.session = session[:MAX_SESSION_CHARS] if session else None


async def routing_hints(request: Request) -> None:
    """Read the request's routing hints (X-Vgate-Priority, X-Vgate-Session) into its context."""
    read_routing_hints(request)


class ClientDisconnected(VGateError):
    """The client went away before the answer was ready (499: logged, never sent)."""
    status_code = 499
    type = "client_disconnected"


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run ``work`` but cancel it as soon as the client goes away (as vLLM's own server does):
    a dropped batch must not keep hundreds of sequences busy on the GPU. The work runs in this
    task; one watcher task cancels it (one task per request, not two: a task costs ~2.5 % of the
    passthrough's CPU)."""
    this = asyncio.current_task()
    assert this is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone = True
        this.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if gone and this.uncancel() == 0:  # our cancellation, not the server's: the client left
            raise ClientDisconnected("client closed the connection; work cancelled") from None
        raise
    finally:
        watcher.cancel()
