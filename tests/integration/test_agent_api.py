"""/agent through the HTTP API against the simulator (its tool rules: `CALL <tool> <json>` lines in
the last user message are tool calls; `ALWAYS CALL ...` in the system prompt loops forever)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from structlog.testing import capture_logs

from app.services.agent import AgentTask
from app.services.programs import PredictConfig
from tests.support import completion_chunks, fake_upstream, gateway, live_gateway, sim_reset, sim_stats


async def read_events(response: httpx.Response, enough) -> list[dict]:
    """The complete SSE events of a streaming response, read until ``enough(events)`` holds (or the
    stream ends); leaving the ``stream`` block after it is the client going away."""
    buf, events = "", []
    async for chunk in response.aiter_text():
        buf += chunk
        events = parse_sse(buf.rsplit("\n\n", 1)[0])
        if enough(events):
            break
    return events


def parse_sse(text: str) -> list[dict]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        ev: dict = {}
        for line in block.split("\n"):
            if line.startswith("id:"):
                ev["id"] = int(line[3:].strip())
            elif line.startswith("event:"):
                ev["event"] = line[6:].strip()
            elif line.startswith("data:"):
                ev["data"] = json.loads(line[5:].strip())
        if "event" in ev:
            events.append(ev)
    return events


def names(events: list[dict]) -> list[str]:
    return [e["event"] for e in events if e["event"] not in ("delta", "reasoning")]


def add_test_tools(gw, *, slow_s: float = 0.3):
    """Tools that only tests need: slow ones (to see concurrency), one that raises, one that hangs."""
    state = {"running": 0, "peak": 0, "cancelled": 0}

    async def slow(tag: str) -> str:
        """Wait a moment and echo the tag."""
        state["running"] += 1
        state["peak"] = max(state["peak"], state["running"])
        try:
            await asyncio.sleep(slow_s)
        finally:
            state["running"] -= 1
        return f"done {tag}"

    def broken(x: int) -> int:
        """Always fails."""
        raise RuntimeError("disk on fire")

    async def hang(x: int) -> int:
        """Never returns."""
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            state["cancelled"] += 1
            raise
        return x

    reg = gw.state.tools.registry
    reg.register(slow)
    reg.register(broken)
    reg.register(hang, timeout_s=0.3)
    return state


async def run_sse(client, payload, **kw) -> list[dict]:
    r = await client.post("/agent", json=payload, **kw)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    return parse_sse(r.text)


async def test_calculator_run_events_in_order_with_usage_totals(sim_url):
    async with gateway(sim_url) as gw:
        events = await run_sse(gw.client, {"input": 'What is 6*7?\nCALL calculator {"expression": "6*7"}'})
        upstream_prompt = gw.metric("vgate_prompt_tokens_total", model="sim-model", route="agent")
        upstream_completion = gw.metric("vgate_completion_tokens_total", model="sim-model", route="agent")
        upstream_cost = gw.metric("vgate_cost_usd_total", model="sim-model", route="agent")
        calls_ok = gw.metric("vgate_tool_calls_total", tool="calculator", status="ok")
    assert names(events) == ["run", "tool_call", "tool_result", "final"]
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    call, result, final = events[1]["data"], events[2]["data"], events[-1]["data"]
    assert call["name"] == "calculator" and call["arguments"] == {"expression": "6*7"}
    assert result["id"] == call["id"] and result["ok"] is True and "42" in json.dumps(result["result"])
    assert final["stop_reason"] == "answer" and final["steps"] == final["model_calls"] == 2
    assert "42" in final["answer"]
    assert final["usage"]["prompt_tokens"] == upstream_prompt > 0
    assert final["usage"]["completion_tokens"] == upstream_completion > 0
    assert final["cost_usd"] == pytest.approx(upstream_cost)
    assert calls_ok == 1


async def test_parallel_tool_calls_run_concurrently(sim_url):
    async with gateway(sim_url) as gw:
        state = add_test_tools(gw, slow_s=0.3)
        t0 = time.perf_counter()
        events = await run_sse(gw.client, {"input": "\n".join(
            f'CALL slow {{"tag": "{i}"}}' for i in range(4))})
        elapsed = time.perf_counter() - t0
    results = [e["data"] for e in events if e["event"] == "tool_result"]
    assert sorted(r["result"] for r in results) == [f"done {i}" for i in range(4)]
    assert state["peak"] == 4  # all four were running at the same time
    assert elapsed < 4 * 0.3  # not one after another


async def test_tool_errors_and_timeouts_become_results_and_the_run_continues(sim_url):
    async with gateway(sim_url) as gw:
        add_test_tools(gw)
        events = await run_sse(gw.client, {"input": 'CALL broken {"x": 1}\nCALL hang {"x": 2}'})
    results = {e["data"]["name"]: e["data"] for e in events if e["event"] == "tool_result"}
    assert results["broken"]["ok"] is False and results["broken"]["error"]["type"] == "tool_failed"
    assert "Traceback" not in json.dumps(results["broken"])
    assert results["hang"]["ok"] is False and results["hang"]["error"]["type"] == "tool_timeout"
    assert events[-1]["event"] == "final" and events[-1]["data"]["stop_reason"] == "answer"


async def test_max_steps_ends_a_looping_model(sim_url):
    async with gateway(sim_url) as gw:
        events = await run_sse(gw.client, {
            "instructions": 'ALWAYS CALL calculator {"expression": "1+1"}',
            "input": "loop forever", "max_steps": 3})
    final = events[-1]
    assert final["event"] == "final"
    assert final["data"]["stop_reason"] == "max_steps" and final["data"]["steps"] == 3
    assert final["data"]["answer"] is None and "max_steps=3" in final["data"]["message"]
    assert names(events).count("tool_call") == 3


async def test_json_response_when_asked(sim_url):
    async with gateway(sim_url) as gw:
        r = await gw.client.post("/agent", headers={"accept": "application/json"},
                                 json={"input": 'CALL calculator {"expression": "2**10"}'})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert "1024" in body["answer"] and body["steps"] == 2
    assert [t["event"] for t in body["trace"]] == ["tool_call", "tool_result"]


async def test_upstream_failure_is_an_error_event_and_a_json_error(sim_url):
    async with gateway(f"http://127.0.0.1:{1}", max_retries=0, default_model="m") as gw:
        events = await run_sse(gw.client, {"input": "hi"})
        r = await gw.client.post("/agent", headers={"accept": "application/json"}, json={"input": "hi"})
    assert events[-1]["event"] == "error" and events[-1]["data"]["type"] == "upstream_unavailable"
    assert r.status_code == 503 and r.json()["error"]["type"] == "upstream_unavailable"


@pytest.mark.parametrize("payload,status,kind", [
    ({}, 422, "invalid_request"),
    ({"input": "x", "messages": [{"role": "user", "content": "y"}]}, 422, "invalid_request"),
    ({"input": "x", "tools": ["nope"]}, 422, "unknown_tool"),
    ({"input": "x", "tools": ["web_search"]}, 422, "tool_unavailable"),
    ({"input": "x", "max_steps": 1000}, 422, "invalid_request"),
    ({"input": "x", "temperature": 1}, 422, "invalid_request"),
])
async def test_bad_agent_requests(sim_url, payload, status, kind):
    async with gateway(sim_url) as gw:
        r = await gw.client.post("/agent", json=payload)
    assert r.status_code == status, r.text
    assert r.json()["error"]["type"] == kind


async def test_sessions_keep_the_conversation(sim_url):
    """The second turn is answered with the first in view: the simulator follows `ALWAYS CALL` lines
    of a conversation's first user message, which only the kept history can give it."""
    turn = {"session_id": "s1", "tools": ["calculator"], "max_steps": 1}
    async with gateway(sim_url) as gw:
        first = await run_sse(gw.client, {**turn, "input": 'ALWAYS CALL calculator {"expression": "3*3"}'})
        second = await run_sse(gw.client, {**turn, "input": "and now?"})
        alone = await run_sse(gw.client, {**turn, "input": "and now?", "session_id": None})
    assert names(first) == ["run", "tool_call", "tool_result", "final"]
    assert names(second) == ["run", "tool_call", "tool_result", "final"]  # turn 1's instruction, remembered
    assert names(alone) == ["run", "final"]
    assert second[-1]["data"]["session_id"] == "s1"
    assert second[-1]["data"]["usage"]["prompt_tokens"] > alone[-1]["data"]["usage"]["prompt_tokens"]


async def test_react_fallback_when_upstream_refuses_tools(sim_no_auto_tools_url):
    """mode "auto" (the default) against a vLLM without --enable-auto-tool-choice: the native call is
    refused with a 400, and the same run answers with the ReAct protocol."""
    async with gateway(sim_no_auto_tools_url) as gw:
        events = await run_sse(gw.client, {"input": "hello", "tools": ["calculator"]})
        refused = gw.metric("vgate_upstream_errors_total", model="sim-model", type="upstream_bad_request")
    assert names(events) == ["run", "final"] and events[-1]["data"]["answer"]
    assert refused == 1 and events[-1]["data"]["model_calls"] == 1  # the refused call, then ReAct's


def test_disconnect_cancels_upstream_and_running_tool(sim_latency_url):
    """A client that goes away mid-run: the upstream stream is closed (the simulator counts an
    abort) and a running tool is cancelled."""

    async def scenario(base: str, app) -> None:
        await sim_reset(sim_latency_url)
        state = add_test_tools(type("G", (), {"state": app.state})(), slow_s=60)
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            # 1) disconnect while the upstream is streaming a long answer
            async with c.stream("POST", "/agent", json={"input": "write a long story",
                                                         "config": {"max_tokens": 4000}}) as r:
                async for line in r.aiter_lines():
                    if line.startswith("event: delta"):
                        break
            for _ in range(100):
                stats = await sim_stats(sim_latency_url)
                if stats["requests_aborted_total"] >= 1:
                    break
                await asyncio.sleep(0.05)
            assert stats["requests_aborted_total"] == 1
            assert stats["num_requests_running"] == 0

            # 2) disconnect while a tool is running
            async with c.stream("POST", "/agent", json={"input": 'CALL slow {"tag": "x"}'}) as r:
                async for line in r.aiter_lines():
                    if line.startswith("event: tool_call"):
                        break
            for _ in range(100):
                if app.state.metrics.registry.get_sample_value(
                        "vgate_tool_calls_total", {"tool": "slow", "status": "cancelled"}):
                    break
                await asyncio.sleep(0.05)
        assert state["running"] == 0
        assert app.state.metrics.registry.get_sample_value(
            "vgate_tool_calls_total", {"tool": "slow", "status": "cancelled"}) == 1
        assert app.state.metrics.registry.get_sample_value("vgate_agent_runs_total", {"outcome": "cancelled"}) == 2

    with live_gateway(sim_latency_url) as (base, app):
        asyncio.run(scenario(base, app))


def test_a_json_client_that_leaves_cancels_the_run_and_the_upstream(sim_latency_url):
    """Accept: application/json: the client drops the connection mid-run; the run is cancelled and
    the simulator sees the upstream sequence aborted."""

    async def scenario(base: str, app) -> dict:
        await sim_reset(sim_latency_url)
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            with pytest.raises(httpx.ReadTimeout):
                await c.post("/agent", headers={"accept": "application/json"}, timeout=httpx.Timeout(30, read=0.5),
                             json={"input": "write a long story", "tools": [],
                                   "config": {"max_tokens": 4000, "min_tokens": 3000}})
        for _ in range(100):
            stats = await sim_stats(sim_latency_url)
            if stats["requests_aborted_total"] >= 1:
                break
            await asyncio.sleep(0.05)
        return stats

    with live_gateway(sim_latency_url) as (base, app):
        stats = asyncio.run(scenario(base, app))
        cancelled = app.state.metrics.registry.get_sample_value("vgate_agent_runs_total", {"outcome": "cancelled"})
    assert stats["requests_aborted_total"] == 1 and stats["num_requests_running"] == 0
    assert cancelled == 1


async def test_a_finished_run_is_resumable_with_the_default_grace(sim_url):
    """With agent_disconnect_grace_s at its default (0) a finished run stays resumable."""
    async with gateway(sim_url) as gw:
        r = await gw.client.post("/agent", json={"input": 'CALL calculator {"expression": "2+2"}'})
        run_id = r.headers["x-vgate-run-id"]
        whole = parse_sse(r.text)
        rest = parse_sse((await gw.client.get(f"/agent/runs/{run_id}/events", headers={"Last-Event-ID": "2"})).text)
    assert len(whole) >= 4 and rest == whole[2:]


def test_a_live_run_is_cancelled_on_disconnect_with_the_default_grace(sim_latency_url):
    """Grace 0 (the default): the run ends when its only client leaves, and its log, which ends with
    the cancellation, can still be read back."""

    async def scenario(base: str) -> tuple[list[dict], list[dict], dict]:
        await sim_reset(sim_latency_url)
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            seen: list[dict] = []
            async with c.stream("POST", "/agent", json={"input": "write a long story", "tools": [],
                                                         "config": {"max_tokens": 4000, "min_tokens": 3000}}) as r:
                run_id = r.headers["x-vgate-run-id"]
                seen = await read_events(r, lambda events: len(events) >= 3)
            for _ in range(100):
                stats = await sim_stats(sim_latency_url)
                if stats["requests_aborted_total"] >= 1:
                    break
                await asyncio.sleep(0.05)
            replay = parse_sse((await c.get(f"/agent/runs/{run_id}/events",
                                            headers={"Last-Event-ID": str(seen[-1]["id"])})).text)
        return seen, replay, stats

    with live_gateway(sim_latency_url) as (base, _):
        seen, replay, stats = asyncio.run(scenario(base))
    assert stats["requests_aborted_total"] == 1 and stats["num_requests_running"] == 0
    assert replay[0]["id"] == seen[-1]["id"] + 1
    assert replay[-1]["event"] == "error" and replay[-1]["data"]["type"] == "cancelled"


def test_last_event_id_resumes_without_duplicates_or_gaps(sim_latency_url):
    async def scenario(base: str) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            first: list[dict] = []
            async with c.stream("POST", "/agent", json={"input": "tell me a story",
                                                         "config": {"max_tokens": 400, "min_tokens": 300}}) as r:
                run_id = r.headers["x-vgate-run-id"]
                first = await read_events(r, lambda events: len(events) >= 5)
            last_id = first[-1]["id"]
            r2 = await c.get(f"/agent/runs/{run_id}/events", headers={"Last-Event-ID": str(last_id)})
            rest = parse_sse(r2.text)
            again = parse_sse((await c.get(f"/agent/runs/{run_id}/events")).text)
            missing = await c.get("/agent/runs/run_nope/events")
        ids = [e["id"] for e in first] + [e["id"] for e in rest]
        assert ids == list(range(1, len(ids) + 1))  # no duplicates, no gaps
        assert rest[0]["id"] == last_id + 1 and rest[-1]["event"] == "final"
        assert [e["id"] for e in again] == ids  # the whole log, after the run
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "run_not_found"

    with live_gateway(sim_latency_url, agent_disconnect_grace_s=5) as (base, _):
        asyncio.run(scenario(base))


async def test_heartbeat_comments_while_a_tool_runs(sim_url):
    async with gateway(sim_url, sse_heartbeat_s=0.1) as gw:
        add_test_tools(gw, slow_s=0.5)
        r = await gw.client.post("/agent", json={"input": 'CALL slow {"tag": "h"}'})
    comments = [line for line in r.text.splitlines() if line.startswith(":")]
    assert comments, "no SSE comment was sent while the tool ran"
    assert parse_sse(r.text)[-1]["event"] == "final"


async def test_cors_for_browser_clients(sim_url):
    origin = "https://app.example.com"
    async with gateway(sim_url, cors_origins=[origin]) as gw:
        pre = await gw.client.options("/agent", headers={
            "origin": origin, "access-control-request-method": "POST",
            "access-control-request-headers": "content-type"})
        other = await gw.client.options("/agent", headers={
            "origin": "https://evil.example", "access-control-request-method": "POST"})
        actual = await gw.client.get("/healthz", headers={"origin": origin})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == origin
    assert "access-control-allow-origin" not in other.headers
    # a browser script can read these only if they are exposed: the run id to resume, the retry hint
    exposed = {h.strip().lower() for h in actual.headers["access-control-expose-headers"].split(",")}
    assert {"x-request-id", "x-vgate-overhead-ms", "x-vgate-run-id", "retry-after"} <= exposed


async def test_cors_is_off_by_default(sim_url):
    async with gateway(sim_url) as gw:
        r = await gw.client.get("/healthz", headers={"origin": "https://app.example.com"})
    assert "access-control-allow-origin" not in r.headers


async def test_falls_back_to_react_when_auto_tool_choice_is_refused(sim_no_auto_tools_url):
    """A forced first call works natively; the next step's "auto" is refused (400), and the run
    carries on with the ReAct protocol instead of failing."""
    async with gateway(sim_no_auto_tools_url) as gw:
        events = await run_sse(gw.client, {
            "input": "What is 2+2?", "tools": ["calculator"],
            "tool_choice": {"type": "function", "function": {"name": "calculator"}}})
        again = await run_sse(gw.client, {"input": "hello", "tools": ["calculator"]})
        refused = gw.metric("vgate_upstream_errors_total", model="sim-model", type="upstream_bad_request")
    assert names(events) == ["run", "tool_call", "tool_result", "final"]
    assert events[-1]["data"]["stop_reason"] == "answer"
    assert names(again) == ["run", "final"]
    assert refused == 1  # remembered for a while: the second run did not try native tools again


@pytest.mark.parametrize("payload", [
    {"input": "x", "tool_choice": {"function": "calc"}},
    {"input": "x", "tool_choice": {"type": "function", "function": {"name": "nope"}}},
    {"messages": [{"role": "assistant", "tool_calls": [{"x": 1}]}]},
    {"messages": [{"role": "user", "tool_calls": [{"id": "a", "function": {"name": "calculator"}}]}]},
    {"messages": [{"role": "tool", "content": "42"}]},
])
async def test_malformed_tool_fields_are_422(sim_url, payload):
    async with gateway(sim_url) as gw:
        r = await gw.client.post("/agent", json=payload)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["type"] == "invalid_request"


async def test_a_bad_tool_name_400_does_not_switch_the_model_to_react():
    """Only vLLM's 'auto tool choice' refusal is remembered; another 400 fails just that run."""

    sent: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": "m", "object": "model"}]})
        sent.append(json.loads(request.content))
        return httpx.Response(400, json={"error": {"message": "Tool 'x' has not been passed in `tools`",
                                                   "type": "BadRequestError", "param": None, "code": 400}})

    async with gateway("http://up", default_model="m", lm_transport=httpx.MockTransport(handler)) as gw:
        events = parse_sse((await gw.client.post("/agent", json={"input": "hi"})).text)
        await gw.client.post("/agent", json={"input": "hi"})
    assert events[-1]["event"] == "error" and events[-1]["data"]["type"] == "upstream_bad_request"
    assert len(sent) == 2 and all("tools" in body for body in sent)  # no switch, and the next run goes native


async def test_too_many_concurrent_runs_is_503(sim_latency_url):
    async with gateway(sim_latency_url, agent_max_concurrent_runs=1) as gw:
        first = await gw.state.agent.start(AgentTask(
            messages=[{"role": "user", "content": "write a long story"}], instructions=None, tool_names=[],
            max_steps=1, model=None, config=PredictConfig(max_tokens=2000)))
        r = await gw.client.post("/agent", json={"input": "hi"})
        first.task.cancel()
    assert r.status_code == 503 and r.json()["error"]["type"] == "agent_overloaded"
    assert r.headers["retry-after"] == "1"


async def test_native_mode_with_an_ignored_forced_call_is_a_typed_502():
    """mode "native" cannot fall back to ReAct: an upstream that answers a forced tool call in text
    (a chat template without tools, llama.cpp) ends the run with a clear 502, not an internal error."""
    sent: list[dict] = []
    upstream = fake_upstream(completion_chunks("12 times 7 is 84."), check=lambda r: sent.append(json.loads(r.content)))
    payload = {"input": "What is 12*7?", "tools": ["calculator"], "mode": "native",
               "tool_choice": {"type": "function", "function": {"name": "calculator"}}}
    async with gateway("http://up", default_model="m", lm_transport=upstream) as gw:
        with capture_logs() as logs:
            events = await run_sse(gw.client, payload)
            r = await gw.client.post("/agent", headers={"accept": "application/json"}, json=payload)
    err = events[-1]
    assert err["event"] == "error" and err["data"]["type"] == "tool_choice_ignored", err
    assert err["data"]["status"] == 502 and '"auto"' in err["data"]["message"]
    assert r.status_code == 502, r.text
    body = r.json()["error"]
    assert body["type"] == "tool_choice_ignored" and "ReAct" in body["message"] and body["run_id"]
    assert len(sent) == 2  # one call per run: no ReAct retry in native mode
    events_logged = [e["event"] for e in logs]
    assert "agent_run_crashed" not in events_logged and events_logged.count("tool_choice_ignored") == 2


async def test_tool_calls_over_the_per_turn_limit_are_not_published_one_by_one():
    """A model that emits 100 tool calls in one turn (limit 16): 16 run, and one error result
    stands for the rest; the conversation keeps only the calls it answers (every tool_call id
    has its tool message, as the OpenAI protocol requires)."""
    calls = [{"index": i, "id": f"call_{i}", "type": "function",
              "function": {"name": "calculator", "arguments": json.dumps({"expression": f"{i}+1"})}}
             for i in range(100)]
    upstream, sent = _tool_turn_then_done(calls)
    async with gateway("http://up", default_model="m", lm_transport=upstream,
                       agent_max_tool_calls_per_turn=16) as gw:
        events = await run_sse(gw.client, {"input": "add", "tools": ["calculator"]})
    results = [e["data"] for e in events if e["event"] == "tool_result"]
    assert events[-1]["event"] == "final" and events[-1]["data"]["answer"] == "done"
    assert len(results) <= 17 and len([e for e in events if e["event"] == "tool_call"]) <= 17
    assert sum(r["ok"] for r in results) == 16
    [excess] = [r for r in results if not r["ok"]]
    assert excess["error"]["type"] == "too_many_tool_calls" and "100" in excess["error"]["message"]
    messages = sent[1]["messages"]
    asked = [tc["id"] for m in messages if m["role"] == "assistant" for tc in m.get("tool_calls") or ()]
    answered = [m["tool_call_id"] for m in messages if m["role"] == "tool"]
    assert len(asked) <= 17 and sorted(asked) == sorted(answered)


def _tool_turn_then_done(calls: list[dict]) -> tuple[httpx.MockTransport, list[dict]]:
    """An upstream whose first turn is ``calls`` (streamed tool calls) and whose next turns answer
    "done"; the request bodies it received are collected in the list."""
    turn = [{"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": calls}}]},
            {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}]
    sent: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": "m", "object": "model"}]})
        sent.append(json.loads(request.content))
        chunks = turn if len(sent) == 1 else completion_chunks("done")
        body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    return httpx.MockTransport(handler), sent


@pytest.mark.parametrize("accept", ["text/event-stream", "application/json"])
async def test_a_tool_result_with_a_lone_surrogate_or_nan_does_not_break_the_run(accept):
    """A tool's result can hold what JSON text spells but no UTF-8 stream or strict JSON carries
    (a service answering {"v": "x\\ud800y", "n": NaN}): the stream went dead after tool_call, the
    JSON form was a 422 blaming the client. The result is repaired (U+FFFD, null) and the run goes on."""
    upstream, sent = _tool_turn_then_done([{"index": 0, "id": "call_0", "type": "function",
                                            "function": {"name": "odd", "arguments": "{}"}}])
    async with gateway("http://up", default_model="m", lm_transport=upstream) as gw:
        gw.state.tools.registry.register(lambda: {"v": "x\ud800y", "n": float("nan")}, name="odd",
                                         description="Odd text.")
        r = await gw.client.post("/agent", json={"input": "x", "tools": ["odd"]}, headers={"accept": accept})
    assert r.status_code == 200, r.text
    assert "NaN" not in r.text
    if accept == "application/json":
        body = r.json()
        assert body["answer"] == "done"
        result = next(t for t in body["trace"] if t["event"] == "tool_result")
    else:
        events = parse_sse(r.text)
        assert events[-1]["event"] == "final" and events[-1]["data"]["answer"] == "done"
        result = next(e["data"] for e in events if e["event"] == "tool_result")
    assert result["ok"] is True and result["result"] == {"v": "x\ufffdy", "n": None}
    tool_message = next(m for m in sent[1]["messages"] if m["role"] == "tool")
    assert json.loads(tool_message["content"]) == {"v": "x\ufffdy", "n": None}


def strict_events(text: str) -> list[dict]:
    """``parse_sse``, as strict as a browser's JSON.parse: NaN and Infinity are not JSON."""

    def refuse(name: str):
        raise ValueError(f"{name} is not JSON")

    for line in text.split("\n"):
        if line.startswith("data:"):
            json.loads(line[5:].strip(), parse_constant=refuse)
    return parse_sse(text)


async def test_the_event_stream_never_breaks_on_data_json_cannot_carry(monkeypatch):
    """The backstop: should an event's data hold a lone surrogate or NaN (the executor and the loop
    keep them out), the stream still carries it as JSON any client can read, and goes on."""
    from app.tools.executor import ToolExecutor, ToolResult

    class Raw(ToolResult):
        def content(self) -> str:
            return "ok"

    async def execute(self, name, arguments, *, call_id=None):
        return Raw(name, call_id, True, {"v": "x\ud800y", "n": float("nan"), "k\udc00": [float("-inf")]})

    monkeypatch.setattr(ToolExecutor, "execute", execute)
    upstream, _ = _tool_turn_then_done([{"index": 0, "id": "call_0", "type": "function",
                                         "function": {"name": "calculator", "arguments": "{}"}}])
    async with gateway("http://up", default_model="m", lm_transport=upstream) as gw:
        r = await gw.client.post("/agent", json={"input": "x", "tools": ["calculator"]})
    events = strict_events(r.text)
    assert events[-1]["event"] == "final" and events[-1]["data"]["answer"] == "done", r.text
    result = next(e["data"] for e in events if e["event"] == "tool_result")
    assert result["result"] == {"v": "x\ufffdy", "n": None, "k\ufffd": [None]}


@pytest.mark.parametrize("accept", ["text/event-stream", "application/json"])
async def test_a_react_action_input_nested_too_deeply_is_invalid_arguments(accept):
    """ "Action Input: [[[[..." past the recursion limit crashed the run (agent_run_crashed, a 500)."""
    text = "Thought: ok\nAction: calculator\nAction Input: " + "[" * 1200
    sent: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": "m", "object": "model"}]})
        sent.append(json.loads(request.content))
        chunks = completion_chunks(text if len(sent) == 1 else "Final Answer: sorry")
        body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    async with gateway("http://up", default_model="m", lm_transport=httpx.MockTransport(handler)) as gw:
        r = await gw.client.post("/agent", json={"input": "x", "tools": ["calculator"], "mode": "react"},
                                 headers={"accept": accept})
    assert r.status_code == 200, r.text
    if accept == "application/json":
        body = r.json()
        trace = body["trace"]
    else:
        events = parse_sse(r.text)
        body = events[-1]["data"]
        assert events[-1]["event"] == "final"
        trace = [e["data"] for e in events if e["event"] in ("tool_call", "tool_result")]
    assert body["answer"] == "sorry"
    result = next(t for t in trace if "ok" in t)
    assert result["ok"] is False and result["error"]["type"] == "invalid_arguments"


@pytest.mark.parametrize("args", ['{"expression": NaN}', '{"expression": "1+1", "x": -Infinity}',
                                  '{"expression": "1+\\ud800"}'])
@pytest.mark.parametrize("accept", ["text/event-stream", "application/json"])
async def test_tool_call_arguments_json_cannot_carry_are_shown_as_the_models_text(accept, args):
    """A model (or content injected into it) can write what Python's json.loads reads but no JSON
    document or UTF-8 stream can carry: NaN, Infinity, a lone surrogate ("\\ud800"). The run goes
    on, the tool_call event shows the model's text, and the tool gets no such arguments."""
    upstream, _ = _tool_turn_then_done([{"index": 0, "id": "call_0", "type": "function",
                                         "function": {"name": "calculator", "arguments": args}}])
    async with gateway("http://up", default_model="m", lm_transport=upstream) as gw:
        r = await gw.client.post("/agent", json={"input": "add", "tools": ["calculator"]}, headers={"accept": accept})
    assert r.status_code == 200, r.text
    if accept == "application/json":
        trace = r.json()["trace"]
    else:
        events = strict_events(r.text)
        assert events[-1]["event"] == "final"
        trace = [e["data"] | {"event": e["event"]} for e in events]
    call = next(t for t in trace if t["event"] == "tool_call")
    result = next(t for t in trace if t["event"] == "tool_result")
    assert call["arguments"] == args  # the model's text, as written
    assert result["ok"] is False and result["error"]["type"] == "invalid_arguments"
