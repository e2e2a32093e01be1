"""How /agent streams model text: the order of `reasoning` and `delta` events, how soon a piece is
published, and that the ReAct path streams too. Timings come from a scripted upstream that sends
each chunk at a set time, served over real HTTP to a real gateway (uvicorn), read by a real client."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn

from app.procs import wait_healthy
from tests.integration.test_agent_api import parse_sse, run_sse
from tests.support import fake_upstream, free_port, gateway, live_gateway


def chunk(**delta) -> dict:
    return {"id": "c", "model": "m", "choices": [{"index": 0, "delta": delta}]}


def finish(reason: str = "stop") -> list[dict]:
    return [{"id": "c", "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]},
            {"id": "c", "model": "m", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}}]


@contextmanager
def scripted_upstream(script: list[tuple[float, dict]]) -> Iterator[str]:
    """An OpenAI-compatible upstream on a free port whose chat stream sends each ``(at_s, chunk)``
    ``at_s`` seconds after the request arrived (the same script for every request)."""

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path.endswith("/chat/completions"):
            more = True
            while more:
                more = (await receive()).get("more_body", False)
            t0 = time.perf_counter()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            for at, c in script:
                await asyncio.sleep(max(0.0, at - (time.perf_counter() - t0)))
                await send({"type": "http.response.body", "body": f"data: {json.dumps(c)}\n\n".encode(),
                            "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
            return
        body = (json.dumps({"object": "list", "data": [{"id": "m", "object": "model", "max_model_len": 8192}]})
                if path.endswith("/models") else "").encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off",
                                           loop="asyncio"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_healthy(f"http://127.0.0.1:{port}", 30, path="/health")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


async def timed_events(base: str, payload: dict) -> list[tuple[float, dict]]:
    """The run's events, each with its arrival time in seconds after the `run` event arrived."""
    got: list[tuple[float, dict]] = []
    t_run = None
    async with httpx.AsyncClient(base_url=base, timeout=30) as c:
        async with c.stream("POST", "/agent", json=payload) as r:
            buf = ""
            async for text in r.aiter_text():
                buf += text.replace("\r\n", "\n")
                while "\n\n" in buf:
                    block, buf = buf.split("\n\n", 1)
                    for ev in parse_sse(block + "\n\n"):
                        now = time.perf_counter()
                        t_run = now if t_run is None else t_run
                        got.append((now - t_run, ev))
    return got


def test_a_pending_piece_is_published_without_waiting_for_the_next_token():
    """Reasoning sent at 0.2 s and an answer word at 0.4 s, then nothing until 0.9 s: each reaches
    the client about 50 ms after the upstream sent it, not when the next token comes."""
    script = [(0.0, chunk(role="assistant", content="")), (0.2, chunk(reasoning="thinking")),
              (0.4, chunk(content="Hello")), (0.9, chunk(content=" world")),
              *((0.9, c) for c in finish())]
    with scripted_upstream(script) as up, live_gateway(up, default_model="m") as (base, _):
        events = asyncio.run(timed_events(base, {"input": "hi", "tools": []}))
    text = [(t, e["event"], e["data"]["text"]) for t, e in events if e["event"] in ("reasoning", "delta")]
    assert [(kind, s) for _, kind, s in text] == [("reasoning", "thinking"), ("delta", "Hello"),
                                                  ("delta", " world")]
    (t_thought, _, _), (t_hello, _, _), (t_world, _, _) = text
    # Bounds with room for a loaded machine, still far from the old behaviour (both held until 0.9 s)
    assert t_thought < 0.55  # sent at 0.2 (until now it waited for the end of the call, at 0.9)
    assert t_hello < 0.8 and t_world - t_hello > 0.25  # sent 0.5 s apart
    assert events[-1][1]["event"] == "final" and events[-1][1]["data"]["answer"] == "Hello world"


async def test_reasoning_and_answer_events_keep_the_models_order(sim_url):
    """With thinking on, the simulator streams all its reasoning, then the answer, at once: no
    reasoning event may come after an answer delta, and each kind joins back to the whole."""
    async with gateway(sim_url) as gw:
        events = await run_sse(gw.client, {"input": "Why is the sky blue?", "tools": [],
                                           "config": {"chat_template_kwargs": {"enable_thinking": True}}})
    kinds = [e["event"] for e in events if e["event"] in ("reasoning", "delta")]
    assert "reasoning" in kinds and "delta" in kinds
    assert kinds == sorted(kinds, key=lambda k: k == "delta"), kinds  # all reasoning first
    answer = "".join(e["data"]["text"] for e in events if e["event"] == "delta")
    assert answer == events[-1]["data"]["answer"]


async def test_a_reasoning_tail_is_not_published_after_the_answer():
    chunks = [chunk(role="assistant", content=""), chunk(reasoning="think-tail"), chunk(content="A" * 70),
              *finish()]
    async with gateway("http://up", default_model="m", lm_transport=fake_upstream(chunks)) as gw:
        events = await run_sse(gw.client, {"input": "hi", "tools": []})
    assert [(e["event"], e["data"]["text"]) for e in events if e["event"] in ("reasoning", "delta")] == [
        ("reasoning", "think-tail"), ("delta", "A" * 70)]


# ---------------------------------------------------------------------- ReAct and the fallback


def deltas(events: list[dict]) -> list[str]:
    return [e["data"]["text"] for e in events if e["event"] == "delta"]


async def test_a_react_reply_in_neither_form_is_the_answer_once_it_is_whole(sim_url):
    """The simulator ignores the ReAct format, so its whole reply is the answer. Until the reply
    ends a "Final Answer:" or "Action:" could still come, so it is shown once whole: as the
    answer's deltas, and as nothing else."""
    async with gateway(sim_url) as gw:
        events = await run_sse(gw.client, {"input": "Tell me about the history of the bicycle in Europe",
                                           "mode": "react", "config": {"min_tokens": 60}})
    answer = events[-1]["data"]["answer"]
    assert len(answer) > 130
    assert "".join(deltas(events)) == answer
    assert not [e for e in events if e["event"] == "reasoning"]


async def test_react_final_answer_streams_without_the_protocol_markers():
    words = ["Thought", ":", " I", " know", " it", ".", "\n", "Final", " Answer", ":", " The", " bicycle",
             *[f" word{i}" for i in range(20)], "\n"]
    chunks = [chunk(role="assistant", content=""), *(chunk(content=w) for w in words), *finish()]
    async with gateway("http://up", default_model="m", lm_transport=fake_upstream(chunks)) as gw:
        events = await run_sse(gw.client, {"input": "hi", "mode": "react", "tools": ["calculator"]})
    final = events[-1]["data"]
    assert final["answer"] == "The bicycle" + "".join(f" word{i}" for i in range(20))
    assert len(deltas(events)) >= 2 and "".join(deltas(events)) == final["answer"]
    thoughts = [e["data"]["text"] for e in events if e["event"] == "reasoning"]
    assert "".join(thoughts) == "I know it."


async def test_an_ignored_forced_tool_call_does_not_stop_later_runs_streaming():
    """An upstream that ignores tools answers the forced first call in text. That run falls back to
    ReAct; later runs, with or without tools, still try native tools first and stream their text."""
    words = [f" w{i}" for i in range(40)]
    chunks = [chunk(role="assistant", content=""), *(chunk(content=w) for w in words), *finish()]
    sent: list[dict] = []
    upstream = fake_upstream(chunks, check=lambda r: sent.append(json.loads(r.content)))
    async with gateway("http://up", default_model="m", lm_transport=upstream) as gw:
        first = await run_sse(gw.client, {"input": "What is 12*7?", "tools": ["calculator"],
                                          "tool_choice": {"type": "function", "function": {"name": "calculator"}}})
        n_first = len(sent)
        plain = await run_sse(gw.client, {"input": "hello", "tools": []})
        with_tools = await run_sse(gw.client, {"input": "hello", "tools": ["calculator"]})
    assert first[-1]["event"] == "final" and n_first == 2  # the ignored native call, then ReAct
    assert "response_format" in sent[1]
    for events in (plain, with_tools):
        assert events[-1]["event"] == "final"
        assert events[-1]["data"]["answer"].strip() == "".join(words).strip()
        assert len(deltas(events)) >= 2 and "".join(deltas(events)) == events[-1]["data"]["answer"]
    assert "tools" in sent[-1] and "Final Answer" not in json.dumps(sent[-1]["messages"])  # native again


async def test_a_refusal_of_native_tools_is_forgotten_after_a_while(sim_no_auto_tools_url):
    """The refusal (vLLM without --enable-auto-tool-choice) is remembered for a time, not for good."""
    async with gateway(sim_no_auto_tools_url) as gw:
        gw.state.agent.tool_support.ttl_s = 0  # forgotten at once
        for _ in range(2):
            events = await run_sse(gw.client, {"input": "hello", "tools": ["calculator"]})
            assert events[-1]["event"] == "final" and events[-1]["data"]["answer"]
        refused = gw.metric("vgate_upstream_errors_total", model="sim-model", type="upstream_bad_request")
    assert refused == 2  # each run asked for native tools again


def replies_upstream(replies: list[str], sent: list[dict]) -> httpx.MockTransport:
    """An upstream whose n-th chat call streams ``replies[n]`` a few characters at a time."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": "m", "object": "model"}]})
        sent.append(json.loads(request.content))
        reply = replies[min(len(sent), len(replies)) - 1]
        chunks = [chunk(role="assistant", content=""),
                  *(chunk(content=reply[i:i + 3]) for i in range(0, len(reply), 3)), *finish()]
        body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    return httpx.MockTransport(handler)


async def test_react_text_before_a_marker_never_streams_as_the_answer():
    """Small models often write a sentence before the protocol's markers. That sentence is no
    answer: the deltas join to exactly the final answer, and a tool call's turn streams none."""
    sent: list[dict] = []
    replies = ["I will use the tool.\nAction: calculator\nAction Input: {\"expression\": \"6*7\"}",
               "Let me think about it. Final Answer: 42"]
    async with gateway("http://up", default_model="m", lm_transport=replies_upstream(replies, sent)) as gw:
        events = await run_sse(gw.client, {"input": "What is 6*7?", "mode": "react", "tools": ["calculator"]})
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "final" and events[-1]["data"]["answer"] == "42" and len(sent) == 2
    assert "delta" not in kinds[:kinds.index("tool_result")]  # the tool call's turn
    assert "".join(deltas(events)) == "42"
    thoughts = [e["data"]["text"] for e in events if e["event"] == "reasoning"]
    assert thoughts == ["I will use the tool.", "Let me think about it."]


def turns_upstream(turns: list[list[dict]], sent: list[dict]) -> httpx.MockTransport:
    """An upstream whose n-th chat call streams the chunks ``turns[n]`` (the last one again after)."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": "m", "object": "model"}]})
        sent.append(json.loads(request.content))
        chunks = turns[min(len(sent), len(turns)) - 1]
        body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    return httpx.MockTransport(handler)


def text_by_step(events: list[dict], kind: str) -> dict[int, str]:
    """What the ``kind`` events (delta, reasoning) of each step join to; each names its step."""
    joined: dict[int, str] = {}
    for e in events:
        if e["event"] == kind:
            step = e["data"]["step"]
            assert isinstance(step, int) and 1 <= step <= events[-1]["data"]["steps"], e
            joined[step] = joined.get(step, "") + e["data"]["text"]
    return joined


def assert_last_step_deltas_join_to_the_answer(events: list[dict]) -> None:
    """The documented invariant: the deltas of the final step join to final.answer."""
    final = events[-1]
    assert final["event"] == "final", events
    assert text_by_step(events, "delta").get(final["data"]["steps"], "") == (final["data"]["answer"] or "")


CALL = {"index": 0, "id": "call_0", "type": "function",
        "function": {"name": "calculator", "arguments": '{"expression": "1+1"}'}}


async def test_native_text_of_a_tool_call_turn_is_its_steps_not_the_answer():
    """A native turn's text streams before its tool calls arrive; it is no part of the answer. Every
    delta and reasoning event names its step, and the deltas of the final step join to the answer."""
    sent: list[dict] = []
    turns = [[chunk(role="assistant", reasoning_content="I should add."), chunk(content="Let me compute that. "),
              chunk(tool_calls=[CALL]), *finish("tool_calls")],
             [chunk(role="assistant", reasoning_content="It is 2."), chunk(content="2"), *finish()]]
    async with gateway("http://up", default_model="m", lm_transport=turns_upstream(turns, sent)) as gw:
        events = await run_sse(gw.client, {"input": "1+1?", "tools": ["calculator"]})
    assert events[-1]["data"]["answer"] == "2" and events[-1]["data"]["steps"] == 2
    assert text_by_step(events, "delta") == {1: "Let me compute that. ", 2: "2"}
    assert text_by_step(events, "reasoning") == {1: "I should add.", 2: "It is 2."}
    assert_last_step_deltas_join_to_the_answer(events)


async def test_a_native_turn_cut_by_max_tokens_mid_tool_call_answers_with_its_text():
    """Cut by max_tokens while writing a tool call (not run): the text it streamed is the answer."""
    cut = {**CALL, "function": {"name": "calculator", "arguments": '{"expre'}}
    turns = [[chunk(role="assistant", content="Let me compute"), chunk(tool_calls=[cut]), *finish("length")]]
    async with gateway("http://up", default_model="m", lm_transport=turns_upstream(turns, [])) as gw:
        events = await run_sse(gw.client, {"input": "1+1?", "tools": ["calculator"]})
    assert events[-1]["data"]["stop_reason"] == "length"
    assert events[-1]["data"]["answer"] == "Let me compute"
    assert "tool_call" not in [e["event"] for e in events]
    assert_last_step_deltas_join_to_the_answer(events)


def reply_chunks(reply: str, reason: str = "stop") -> list[dict]:
    return [chunk(role="assistant", content=""), *(chunk(content=reply[i:i + 3]) for i in range(0, len(reply), 3)),
            *finish(reason)]


async def test_react_deltas_of_the_final_step_join_to_the_answer():
    turns = [reply_chunks('Thought: add\nAction: calculator\nAction Input: {"expression": "1+1"}'),
             reply_chunks("Thought: got it\nFinal Answer: 2")]
    async with gateway("http://up", default_model="m", lm_transport=turns_upstream(turns, [])) as gw:
        events = await run_sse(gw.client, {"input": "1+1?", "tools": ["calculator"], "mode": "react"})
    assert events[-1]["data"]["answer"] == "2"
    assert text_by_step(events, "reasoning") == {1: "add", 2: "got it"}
    assert text_by_step(events, "delta") == {2: "2"}
    assert_last_step_deltas_join_to_the_answer(events)


async def test_react_turn_cut_by_max_tokens_streams_its_answer_as_the_answer():
    turns = [reply_chunks("Thought: long\nFinal Answer: the answer is cut", "length")]
    async with gateway("http://up", default_model="m", lm_transport=turns_upstream(turns, [])) as gw:
        events = await run_sse(gw.client, {"input": "x", "tools": ["calculator"], "mode": "react"})
    assert events[-1]["data"]["stop_reason"] == "length"
    assert events[-1]["data"]["answer"] == "the answer is cut"
    assert_last_step_deltas_join_to_the_answer(events)


async def test_a_forced_react_turn_answered_in_text_streams_that_answer():
    """A forced ReAct turn (structured outputs) streams nothing while it comes; a reply that is no
    JSON action is taken as the answer, and then it is sent as the step's delta."""
    turns = [reply_chunks("The answer is 42.")]
    async with gateway("http://up", default_model="m", lm_transport=turns_upstream(turns, [])) as gw:
        events = await run_sse(gw.client, {"input": "x", "tools": ["calculator"], "mode": "react",
                                           "tool_choice": "required"})
    assert events[-1]["data"]["answer"] == "The answer is 42."
    assert_last_step_deltas_join_to_the_answer(events)
