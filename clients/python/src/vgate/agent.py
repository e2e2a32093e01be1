"""``Agent``: a tool-using run on the gateway (``POST /agent``), streamed as typed events.

A dropped stream is resumed from ``GET /agent/runs/{run_id}/events`` with ``Last-Event-ID``, the
id of the last event seen, so no event is lost or repeated (the gateway keeps a run's events for
``VGATE_AGENT_RESUME_TTL_S``; it cancels a run whose last client left for longer than
``VGATE_AGENT_DISCONNECT_GRACE_S``, 0 by default: raise that to resume mid-run).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from vgate.client import AsyncClient, Client, async_client, sync_client
from vgate.errors import AgentError, ConnectionError, VGateError, error_class, error_from_body
from vgate.results import Usage
from vgate.sse import Resumption, ServerSentEvent, aiter_sse, iter_sse

TERMINAL = ("final", "error")


class Event(BaseModel):
    """An event of a run: ``event`` (its name) and ``event_id`` (its number in the run: 1, 2, ...);
    the data's keys are attributes. Names this client does not know arrive as plain ``Event``s."""

    model_config = ConfigDict(extra="allow")

    event: str
    event_id: int | None = None


class RunEvent(Event):
    """``run``, the first event: the run's id (to resume it), model, session and enabled tools."""

    run_id: str
    model: str | None = None
    session_id: str | None = None
    tools: list[str] = Field(default_factory=list)


class DeltaEvent(Event):
    """``delta``: text as the model writes it; the last step's deltas join to the final answer."""

    text: str
    step: int | None = None


class ReasoningEvent(Event):
    """``reasoning``: the model's thinking, when it emits any."""

    text: str
    step: int | None = None


class ToolCallEvent(Event):
    """``tool_call``: the model asked for a tool (``id`` is the call's id, not the event's)."""

    id: str
    name: str
    arguments: Any = None


class ToolResultEvent(Event):
    """``tool_result``: ``result`` when ``ok``, else ``error`` (the run goes on)."""

    id: str
    name: str
    ok: bool
    latency_ms: float | None = None
    result: Any = None
    error: dict[str, Any] | None = None


class FinalEvent(Event):
    """``final``: how the run ended (``stop_reason``: answer, max_steps, length) and what it cost.
    From ``Agent.run``, ``trace`` holds the run's tool calls and results."""

    answer: str | None = None
    stop_reason: str
    steps: int = 0
    model_calls: int = 0
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float = 0.0
    latency_ms: float | None = None
    model: str | None = None
    run_id: str | None = None
    session_id: str | None = None
    message: str | None = None
    trace: list[ToolCallEvent | ToolResultEvent] = Field(default_factory=list)


class ErrorEvent(Event):
    """``error``: the run failed (the last event); ``exception()`` is the typed error."""

    type: str
    message: str
    status: int | None = None
    retryable: bool | None = None
    retry_after_s: float | None = None

    def exception(self) -> VGateError:
        """This error event as the exception the client would raise for it (its status's class, else AgentError)."""
        error = self.model_dump(exclude={"event", "event_id"}, exclude_none=True)
        cls = error_class(self.status, self.type) if self.status else AgentError
        return error_from_body(error, status=self.status, cls=cls)


_EVENTS: dict[str, type[Event]] = {
    "run": RunEvent, "delta": DeltaEvent, "reasoning": ReasoningEvent, "tool_call": ToolCallEvent,
    "tool_result": ToolResultEvent, "final": FinalEvent, "error": ErrorEvent,
}


def parse_event(sse: ServerSentEvent) -> Event:
    """Decode one server-sent event into its typed Event (a payload that is not a JSON object is kept under data)."""
    try:
        data = json.loads(sse.data)
    except ValueError:
        data = {"data": sse.data}
    if not isinstance(data, dict):
        data = {"data": data}
    event_id = int(sse.id) if sse.id and sse.id.isdigit() else None
    cls = _EVENTS.get(sse.event, Event)
    return cls.model_validate({**data, "event": sse.event, "event_id": event_id})


class Agent:
    """``Agent(tools=["calculator"])``: ``.stream(input)`` yields the run's events, ``.run(input)``
    returns its ``FinalEvent`` (raising the typed error of a failed run). ``input``: a user message,
    or a list of OpenAI-style messages.

    ``system`` (the system prompt), ``max_steps``, ``session_id`` (continue a conversation the
    gateway keeps), ``tool_choice`` (``"auto"``, ``"none"``, ``"required"``, or a tool's name to force
    the first call to it), ``mode`` (``"auto"``, ``"native"``, ``"react"``), ``model``, ``config``
    (sampling; also as keyword arguments), ``max_reconnects`` (resumes of a dropped stream in a row)."""

    def __init__(self, tools: Sequence[str] | None = None, *, model: str | None = None, system: str | None = None,
                 max_steps: int | None = None, session_id: str | None = None, tool_choice: Any = None,
                 mode: str | None = None, config: Mapping[str, Any] | None = None,
                 client: Client | AsyncClient | None = None, max_reconnects: int = 3, **config_kw: Any) -> None:
        self.tools = list(tools) if tools is not None else None
        self.model = model
        self.system = system
        self.max_steps = max_steps
        self.session_id = session_id
        self.tool_choice = tool_choice
        self.mode = mode
        self.config = {**(config or {}), **config_kw}
        self.client = client
        self.max_reconnects = max_reconnects

    def request_body(self, input: str | Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The JSON body of POST /agent for this agent's settings and the given input or messages."""
        body: dict[str, Any] = {"input": input} if isinstance(input, str) else {"messages": [dict(m) for m in input]}
        for key, value in (("tools", self.tools), ("model", self.model), ("instructions", self.system),
                           ("max_steps", self.max_steps), ("session_id", self.session_id), ("mode", self.mode)):
            if value is not None:
                body[key] = value
        if self.tool_choice is not None:
            choice = self.tool_choice
            if isinstance(choice, str) and choice not in ("auto", "none", "required"):
                choice = {"type": "function", "function": {"name": choice}}
            body["tool_choice"] = choice
        if self.config:
            body["config"] = self.config
        return body

    # --- sync ---------------------------------------------------------------------------------
    def stream(self, input: str | Sequence[Mapping[str, Any]]) -> Iterator[Event]:
        """The run's events as they happen: ``run`` first, ``final`` or ``error`` last."""
        client = sync_client(self.client, "Agent")
        return self._follow(client, ("POST", "/agent", self.request_body(input)), None, 0)

    def resume(self, run_id: str, *, after: int = 0) -> Iterator[Event]:
        """The events of a run already started, after event id ``after`` (0: all of them)."""
        client = sync_client(self.client, "Agent")
        return self._follow(client, None, run_id, after)

    def run(self, input: str | Sequence[Mapping[str, Any]]) -> FinalEvent:
        """Run to the end and return the final event; an error event raises its exception."""
        return _finish(self.stream(input))

    def _follow(self, client: Client, first: tuple[str, str, dict] | None, run_id: str | None,
                seen: int) -> Iterator[Event]:
        resume = self._resumption(seen)
        while True:
            method, path, body, headers = _next_request(first, run_id, resume.seen)
            first = None
            try:
                with client.stream(method, path, json=body, headers=headers) as response:
                    run_id = run_id or response.headers.get("x-vgate-run-id")
                    for sse in iter_sse(response.iter_lines()):
                        event = parse_event(sse)
                        if resume.is_new(event.event_id):  # else replayed: already yielded
                            if isinstance(event, RunEvent):
                                run_id = event.run_id
                            yield event
                            if event.event in TERMINAL:
                                return
                reason: Exception = _ended_early()
            except ConnectionError as e:
                reason = e
            time.sleep(resume.pause(reason, resumable=run_id is not None))

    # --- async --------------------------------------------------------------------------------
    def astream(self, input: str | Sequence[Mapping[str, Any]]) -> AsyncIterator[Event]:
        """The run's events as they happen, asynchronously: run first, final or error last."""
        client = async_client(self.client, "Agent")
        return self._afollow(client, ("POST", "/agent", self.request_body(input)), None, 0)

    def aresume(self, run_id: str, *, after: int = 0) -> AsyncIterator[Event]:
        """The events of a run already started, after event id ``after`` (0: all), asynchronously."""
        client = async_client(self.client, "Agent")
        return self._afollow(client, None, run_id, after)

    async def arun(self, input: str | Sequence[Mapping[str, Any]]) -> FinalEvent:
        """Run to the end asynchronously and return the final event; an error event raises its exception."""
        events = [event async for event in self.astream(input)]
        return _finish(iter(events))

    async def _afollow(self, client: AsyncClient, first: tuple[str, str, dict] | None, run_id: str | None,
                       seen: int) -> AsyncIterator[Event]:
        resume = self._resumption(seen)
        while True:
            method, path, body, headers = _next_request(first, run_id, resume.seen)
            first = None
            try:
                async with client.stream(method, path, json=body, headers=headers) as response:
                    run_id = run_id or response.headers.get("x-vgate-run-id")
                    async for sse in aiter_sse(response.aiter_lines()):
                        event = parse_event(sse)
                        if resume.is_new(event.event_id):
                            if isinstance(event, RunEvent):
                                run_id = event.run_id
                            yield event
                            if event.event in TERMINAL:
                                return
                reason: Exception = _ended_early()
            except ConnectionError as e:
                reason = e
            await asyncio.sleep(resume.pause(reason, resumable=run_id is not None))

    def _resumption(self, seen: int) -> Resumption:
        """A dropped stream is resumed ``max_reconnects`` times in a row at most, waiting 0.2 s, 0.4 s, ... 2 s."""
        return Resumption(seen, max_failures=self.max_reconnects,
                          delay=lambda failures: min(0.2 * 2 ** (failures - 1), 2.0))

    def __repr__(self) -> str:
        return f"Agent(tools={self.tools!r})"


def _next_request(first: tuple[str, str, dict] | None, run_id: str | None,
                  seen: int) -> tuple[str, str, dict | None, dict[str, str]]:
    if first is not None:
        method, path, body = first
        return method, path, body, {"accept": "text/event-stream"}
    assert run_id is not None
    return "GET", f"/agent/runs/{run_id}/events", None, {"accept": "text/event-stream", "last-event-id": str(seen)}


def _ended_early() -> ConnectionError:
    return ConnectionError("the event stream ended before the run's last event", type="stream_ended")


def _finish(events: Iterator[Event]) -> FinalEvent:
    trace: list[ToolCallEvent | ToolResultEvent] = []
    for event in events:
        if isinstance(event, (ToolCallEvent, ToolResultEvent)):
            trace.append(event)
        elif isinstance(event, FinalEvent):
            event.trace = trace
            return event
        elif isinstance(event, ErrorEvent):
            raise event.exception()
    raise ConnectionError("the run's stream ended without its final event", type="stream_ended")
