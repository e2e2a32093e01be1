"""POST /agent (SSE or JSON) and GET /agent/runs/{run_id}/events (resume with Last-Event-ID)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.errors import InvalidRequestError, NotFoundError, VGateError
from app.routers.deps import SettingsDep, cancel_on_disconnect
from app.services.agent import AgentRun, AgentService, AgentTask, Mode
from app.services.programs import PredictConfig
from app.settings import Settings

router = APIRouter(tags=["agent"])


async def _agent(request: Request) -> AgentService:
    return request.app.state.agent


AgentDep = Annotated[AgentService, Depends(_agent)]


class FunctionRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"] = "function"
    function: FunctionRef


class FunctionCall(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    arguments: str = Field("{}", description="JSON text, as OpenAI sends it")


class ToolCallMessagePart(BaseModel):
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[ToolCallMessagePart] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _tool_fields(self) -> Message:
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id it answers")
        return self


class AgentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str | None = Field(None, description="a user message")
    messages: list[Message] | None = Field(None, description="a conversation (OpenAI chat messages)")
    instructions: str | None = Field(None, description="the system prompt")
    tools: list[str] | None = Field(None, description="tool names to enable (default: every available tool)")
    max_steps: int | None = Field(None, ge=1, description="model calls at most (default 8)")
    model: str | None = None
    config: PredictConfig = Field(default_factory=PredictConfig)
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = Field(
        None, description="for the first model call only, e.g. to force the first tool call")
    session_id: str | None = Field(None, pattern=r"^[A-Za-z0-9._:\-]{1,128}$",
                                   description="continue a conversation kept by the gateway")
    mode: Mode = Field("auto", description="native tool calling, the ReAct text protocol, or auto")

    @model_validator(mode="after")
    def _one_input(self) -> AgentRequest:
        if (self.input is None) == (self.messages is None):
            raise ValueError("give exactly one of 'input' (a user message) or 'messages' (a conversation)")
        if self.messages is not None and not self.messages:
            raise ValueError("'messages' is empty")
        return self


def _to_task(body: AgentRequest, agent: AgentService, settings: Settings) -> AgentTask:
    if body.max_steps is not None and body.max_steps > settings.agent_max_steps_limit:
        raise InvalidRequestError(f"max_steps is at most {settings.agent_max_steps_limit}")
    instructions = body.instructions
    if body.messages is not None:
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        if instructions is None and messages[0]["role"] == "system":
            instructions = messages.pop(0).get("content")
    else:
        messages = [{"role": "user", "content": body.input}]
    tool_names = agent.check_tools(body.tools)
    if isinstance(body.tool_choice, NamedToolChoice) and body.tool_choice.function.name not in tool_names:
        raise InvalidRequestError(
            f"tool_choice names {body.tool_choice.function.name!r}, which is not an enabled tool", enabled=tool_names
        )
    return AgentTask(
        messages=messages,
        instructions=instructions,
        tool_names=tool_names,
        max_steps=body.max_steps or settings.agent_max_steps,
        model=body.model,
        config=body.config,
        tool_choice=body.tool_choice.model_dump() if isinstance(body.tool_choice, BaseModel) else body.tool_choice,
        session_id=body.session_id,
        mode=body.mode,
    )


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/event-stream" not in accept


@router.post("/agent", response_model=None)
async def run_agent(body: AgentRequest, request: Request, agent: AgentDep,
                    settings: SettingsDep) -> EventSourceResponse | dict[str, Any]:
    run = agent.start(_to_task(body, agent, settings))
    if _wants_json(request):
        assert run.task is not None
        await cancel_on_disconnect(request, run.task)
        return _final_document(run)
    return _event_stream(run, 0, agent, settings)


@router.get("/agent/runs/{run_id}/events", response_model=None)
async def resume_agent(run_id: str, agent: AgentDep, settings: SettingsDep,
                       last_event_id: Annotated[str | None, Header()] = None) -> EventSourceResponse:
    """The events after ``Last-Event-ID`` (header, as EventSource sends it), then the live ones."""
    run = agent.runs.get(run_id)
    if run is None:
        raise NotFoundError(f"unknown or expired run {run_id!r}", type="run_not_found")
    try:
        after = int(last_event_id or 0)
    except ValueError:
        raise InvalidRequestError("Last-Event-ID must be an integer event id") from None
    return _event_stream(run, after, agent, settings)


def _event_stream(run: AgentRun, after_id: int, agent: AgentService, settings: Settings) -> EventSourceResponse:
    async def events() -> AsyncIterator[ServerSentEvent]:
        run.subscribers += 1
        try:
            async for ev in run.follow(after_id):
                yield ServerSentEvent(data=json.dumps(ev.data, ensure_ascii=False, default=str),
                                      event=ev.event, id=str(ev.id))
        finally:
            run.subscribers -= 1
            if run.subscribers == 0 and not run.finished:
                _cancel_later(run, settings.agent_disconnect_grace_s)

    return EventSourceResponse(events(), ping=settings.sse_heartbeat_s, sep="\n",
                               headers={"x-vgate-run-id": run.run_id})


def _cancel_later(run: AgentRun, grace_s: float) -> None:
    """Cancel the run unless a client reconnects within the grace period."""
    if run.task is None:
        return
    if grace_s <= 0:
        run.task.cancel()
        return

    async def later() -> None:
        await asyncio.sleep(grace_s)
        if run.subscribers == 0 and run.task is not None:
            run.task.cancel()

    asyncio.get_running_loop().create_task(later())


def _final_document(run: AgentRun) -> dict[str, Any]:
    last = run.events[-1] if run.events else None
    if last is None or last.event != "final":
        err = dict(last.data) if last is not None else {"type": "internal_error", "message": "run produced nothing"}
        status = err.pop("status", 502)
        raise VGateError(err.pop("message", "agent run failed"), status_code=status,
                         type=err.pop("type", "agent_error"), run_id=run.run_id, **err)
    trace = [{"event": e.event, **e.data} for e in run.events if e.event in ("tool_call", "tool_result")]
    return {**last.data, "trace": trace}
