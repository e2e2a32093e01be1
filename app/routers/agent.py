"""POST /agent (SSE or JSON) and GET /agent/runs/{run_id}/events (resume with Last-Event-ID; with
Redis, through any replica)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Annotated, Any, Literal

import anyio
import structlog
from fastapi import APIRouter, Depends, Header, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.errors import InvalidRequestError
from app.routers.deps import AgentDep, SettingsDep, cancel_on_disconnect, routing_hints
from app.routers.json_body import JSONBodyRoute
from app.routers.schemas import EVENT_STREAM_RESPONSE, AgentFinal, error_responses
from app.services.agent import AgentService, Mode
from app.services.agent.runs import event_json
from app.services.agent.shared_runs import RunLike
from app.services.programs import PredictConfig
from app.settings import Settings

log = structlog.get_logger("vgate.agent")

router = APIRouter(tags=["agent"], route_class=JSONBodyRoute, dependencies=[Depends(routing_hints)])


class FunctionRef(BaseModel):
    """The function a named tool choice forces."""
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)


class NamedToolChoice(BaseModel):
    """A tool choice that forces the first model call to use one tool (OpenAI's form)."""
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"] = "function"
    function: FunctionRef


class FunctionCall(BaseModel):
    """A tool call in an assistant message: the function's name and its arguments as JSON text."""
    name: str = Field(min_length=1, max_length=64)
    arguments: str = Field("{}", description="JSON text, as OpenAI sends it")


class ToolCallMessagePart(BaseModel):
    """One tool call of an assistant message in a conversation."""
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    """One chat message of a conversation (OpenAI's shape); tool messages name the call they answer."""
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
    """The body of POST /agent: the input or conversation, the tools, the limits and the model settings."""
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


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/event-stream" not in accept


@router.post(
    "/agent",
    response_model=AgentFinal,  # with Accept: application/json; the event stream is a Response of its own
    response_model_exclude_unset=True,
    responses={
        200: {"description": "The event stream, or with `Accept: application/json` the run's outcome",
              "content": EVENT_STREAM_RESPONSE["content"]},
        **error_responses(
            400, 401, 403, 404, 409, 413, 422, 429, 502, 503, 504,
            _404="the model is not served by the upstream (model_not_found)",
            _409="another run is using this session (session_busy)",
            _422="invalid request, unknown or unavailable tool, max_steps over the limit",
            _503="the upstream is unavailable, or too many runs are in progress (agent_overloaded)",
        ),
    },
)
async def run_agent(body: AgentRequest, request: Request, agent: AgentDep,
                    settings: SettingsDep) -> EventSourceResponse | dict[str, Any]:
    """Start an agent run and stream its events (SSE), or answer its final result as JSON with ``Accept:
    application/json``."""
    task = agent.make_task(config=body.config, **body.model_dump(exclude={"config"}, exclude_none=True))
    run = await agent.start(task)
    if _wants_json(request):
        return await cancel_on_disconnect(request, agent.result(run))
    return _event_stream(run, 0, agent, settings)


@router.get(
    "/agent/runs/{run_id}/events",
    response_model=None,
    response_class=EventSourceResponse,
    responses={200: EVENT_STREAM_RESPONSE, **error_responses(
        404, 422, 503, _404="unknown or expired run (run_not_found)",
        _422="Last-Event-ID is not an event id (ASCII digits, 0 to 2**53), or is past the last event of a "
             "finished run",
        _503="the run is not on this replica and the shared store (Redis) is unreachable (store_unavailable)")},
)
async def resume_agent(run_id: str, agent: AgentDep, settings: SettingsDep,
                       last_event_id: Annotated[str | None, Header()] = None) -> EventSourceResponse:
    """The events after ``Last-Event-ID`` (header, as EventSource sends it), then the live ones. A
    run of another replica is read from Redis (``VGATE_REDIS_URL``).

    The header is checked before the run is looked up, so a malformed one is the same 422 on every
    replica (see ``last_event_id_value``). An id past the last event of a finished run is a 422 (no
    client saw it: it is not this run's); on a live run it waits for the events after it."""
    after = last_event_id_value(last_event_id)
    run = await agent.find_run(run_id, after)
    return _event_stream(run, after, agent, settings)


_EVENT_ID = re.compile(r"[0-9]{1,16}")  # 2**53 has 16 digits
MAX_EVENT_ID = 2**53  # the largest integer a JavaScript client (EventSource) holds exactly


def last_event_id_value(header: str | None) -> int:
    """The event id a ``Last-Event-ID`` header names: ASCII digits only (no sign, no ``_``, no other
    script's digits), at most 16 of them, 0 to 2**53. Absent or empty (EventSource sends none before
    its first id): 0, the whole log. Anything else is a 422 ``invalid_request``."""
    if not header:
        return 0
    if _EVENT_ID.fullmatch(header) is None or int(header) > MAX_EVENT_ID:
        raise InvalidRequestError("the Last-Event-ID header must be an event id: ASCII digits, 0 to 2**53",
                                  param="Last-Event-ID")
    return int(header)


def _event_stream(run: RunLike, after_id: int, agent: AgentService, settings: Settings) -> EventSourceResponse:
    stopping = anyio.Event()  # set by sse-starlette when the server begins shutting down

    async def events() -> AsyncIterator[ServerSentEvent]:
        async with aclosing(agent.follow(run, after_id, stopping)) as followed:
            async for ev in followed:
                yield ServerSentEvent(data=event_json(ev.data), event=ev.event, id=str(ev.id))

    # The run has shutdown_grace_s to finish and then ends with its shutting_down event; the stream
    # is held open a little longer so that event reaches the client before the connection closes.
    return EventSourceResponse(events(), ping=settings.sse_heartbeat_s, sep="\n",
                               headers={"x-vgate-run-id": run.run_id}, shutdown_event=stopping,
                               shutdown_grace_period=settings.shutdown_grace_s + 1)

