"""Agent: typed events from /agent's stream, run() returning the final event, a dropped stream
resumed with Last-Event-ID without duplicates, sync and async."""

from __future__ import annotations

import json

import httpx
import pytest
import vgate

from tests.support import live_gateway

QUESTION = "What is 12 * 7?"


def test_stream_yields_typed_events_in_order(configured):
    events = list(vgate.Agent(tools=["calculator"], tool_choice="calculator", max_steps=3).stream(QUESTION))
    names = [e.event for e in events]
    assert names[0] == "run" and names[-1] == "final" and "tool_call" in names and "tool_result" in names
    assert [e.event_id for e in events] == list(range(1, len(events) + 1))
    run, final = events[0], events[-1]
    assert isinstance(run, vgate.RunEvent) and run.run_id.startswith("run_") and run.tools == ["calculator"]
    call = next(e for e in events if isinstance(e, vgate.ToolCallEvent))
    result = next(e for e in events if isinstance(e, vgate.ToolResultEvent))
    assert call.name == result.name == "calculator" and call.id == result.id
    assert isinstance(final, vgate.FinalEvent) and final.run_id == run.run_id
    assert final.stop_reason == "answer" and final.usage.total_tokens > 0 and final.cost_usd > 0
    last_step = max(e.step for e in events if isinstance(e, vgate.DeltaEvent))
    assert final.answer == "".join(e.text for e in events if isinstance(e, vgate.DeltaEvent) and e.step == last_step)


def test_run_returns_the_final_event_with_its_trace(configured):
    agent = vgate.Agent(tools=["calculator"], tool_choice="calculator", system="Be brief.", max_steps=3)
    body = agent.request_body(QUESTION)
    assert body["tool_choice"] == {"type": "function", "function": {"name": "calculator"}}
    assert body["instructions"] == "Be brief."
    final = agent.run(QUESTION)
    assert isinstance(final, vgate.FinalEvent) and final.answer and final.steps >= 2
    assert [e.event for e in final.trace] == ["tool_call", "tool_result"]


def test_resume_replays_the_events_after_an_id(configured):
    events = list(vgate.Agent(tools=["calculator"]).stream(QUESTION))
    again = list(vgate.Agent().resume(events[0].run_id, after=1))
    assert [e.model_dump() for e in again] == [e.model_dump() for e in events[1:]]


def test_errors_before_the_stream_are_typed(configured):
    with pytest.raises(vgate.InvalidRequest) as info:
        list(vgate.Agent(tools=["no_such_tool"]).stream(QUESTION))
    assert info.value.status == 422
    with pytest.raises(vgate.NotFound):
        list(vgate.Agent().resume("run_" + "0" * 32))


class DropAfter(httpx.BaseTransport):
    """The real transport, except that the first POST /agent's stream breaks after ``events`` events."""

    def __init__(self, events: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.events = events
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = self.inner.handle_request(request)
        if request.method != "POST" or len(self.requests) > 1:
            return response
        keep = self.events

        class Broken(httpx.SyncByteStream):
            def __iter__(self):
                buffer = b""
                for chunk in response.stream:
                    buffer += chunk
                    while b"\r\n\r\n" in buffer:
                        event, buffer = buffer.split(b"\r\n\r\n", 1)
                        if not event.startswith(b":"):
                            yield event + b"\r\n\r\n"
                            nonlocal keep
                            keep -= 1
                            if keep == 0:
                                raise httpx.RemoteProtocolError("peer closed connection")

            def close(self):
                response.close()

        return httpx.Response(response.status_code, headers=response.headers, stream=Broken())


def test_a_dropped_stream_is_resumed_without_duplicates(sim_url):
    with live_gateway(sim_url, agent_disconnect_grace_s=10) as (url, _):
        transport = DropAfter(events=2)
        client = vgate.Client(url, transport=transport)
        events = list(vgate.Agent(tools=["calculator"], tool_choice="calculator", client=client).stream(QUESTION))
    assert [e.event_id for e in events] == list(range(1, len(events) + 1))
    assert events[-1].event == "final" and len(events) > 2
    resumed = transport.requests[1]
    assert resumed.method == "GET" and resumed.url.path == f"/agent/runs/{events[0].run_id}/events"
    assert resumed.headers["last-event-id"] == "2"


def sse(*events: tuple[int, str, dict]) -> bytes:
    return b"".join(f"id: {i}\nevent: {name}\ndata: {json.dumps(data)}\n\n".encode() for i, name, data in events)


RUN = (1, "run", {"run_id": "run_x", "model": "m", "session_id": None, "tools": []})
DELTA = (2, "delta", {"text": "hi", "step": 1})
FINAL = (3, "final", {"answer": "hi", "stop_reason": "answer", "steps": 1, "model_calls": 1,
                      "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}, "cost_usd": 0.1,
                      "latency_ms": 1.0, "model": "m", "run_id": "run_x"})


def resuming_gateway(seen: list[httpx.Request]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST":  # ends cleanly after the delta, without a final event
            return httpx.Response(200, content=sse(RUN, DELTA), headers={"x-vgate-run-id": "run_x"})
        return httpx.Response(200, content=b": ping\n\n" + sse(DELTA, FINAL))  # replays the delta

    return httpx.MockTransport(handler)


def test_replayed_events_are_not_yielded_twice_and_a_stream_that_just_ends_is_resumed():
    seen: list[httpx.Request] = []
    events = list(vgate.Agent(client=vgate.Client("http://gw", transport=resuming_gateway(seen))).stream("hi"))
    assert [e.event for e in events] == ["run", "delta", "final"]
    assert seen[1].headers["last-event-id"] == "2"


async def test_the_async_stream_resumes_the_same_way():
    seen: list[httpx.Request] = []
    client = vgate.AsyncClient("http://gw", transport=resuming_gateway(seen))
    events = [e async for e in vgate.Agent(client=client).astream("hi")]
    assert [e.event for e in events] == ["run", "delta", "final"]
    assert seen[1].headers["last-event-id"] == "2"


def test_reconnects_are_bounded():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse(RUN) if request.method == "POST" else b"")

    agent = vgate.Agent(client=vgate.Client("http://gw", transport=httpx.MockTransport(handler)), max_reconnects=2)
    with pytest.raises(vgate.ConnectionError):
        list(agent.stream("hi"))


def test_an_error_event_is_yielded_by_stream_and_raised_by_run():
    error = (2, "error", {"type": "shutting_down", "message": "the gateway is stopping", "status": 503,
                          "retryable": True})

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse(RUN, error))

    agent = vgate.Agent(client=vgate.Client("http://gw", transport=httpx.MockTransport(handler)))
    events = list(agent.stream("hi"))
    assert isinstance(events[-1], vgate.ErrorEvent) and events[-1].type == "shutting_down"
    with pytest.raises(vgate.UpstreamError) as info:
        agent.run("hi")
    assert info.value.type == "shutting_down" and info.value.status == 503 and info.value.retryable


async def test_async_stream_and_run(gateway_url):
    async with vgate.AsyncClient(gateway_url) as client:
        agent = vgate.Agent(tools=["calculator"], tool_choice="calculator", client=client)
        names = [e.event async for e in agent.astream(QUESTION)]
        assert names[0] == "run" and names[-1] == "final"
        final = await agent.arun(QUESTION)
        assert final.stop_reason == "answer" and final.trace
