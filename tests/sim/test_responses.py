"""/v1/responses: the response object, the SSE event sequence, input items, tools, errors and faults."""

from __future__ import annotations

import httpx
import pytest

from app.sim.server import SimConfig
from tests.sim.helpers import live_sim, named_events, reset, sim_client, wait_stats

TOOL = {"type": "function", "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


async def respond(client, **body):
    r = await client.post("/v1/responses", json={"input": "Tell me about Paris", **body})
    assert r.status_code == 200, r.text
    return r


async def test_non_stream_shape(client):
    body = (await respond(client, model="sim-model")).json()
    assert body["id"].startswith("resp_") and body["object"] == "response" and body["model"] == "sim-model"
    assert body["status"] == "completed" and body["incomplete_details"] is None
    assert isinstance(body["created_at"], int)
    [message] = body["output"]
    assert message["type"] == "message" and message["role"] == "assistant" and message["status"] == "completed"
    [part] = message["content"]
    assert part["type"] == "output_text" and "Paris" in part["text"] and part["annotations"] == []
    u = body["usage"]
    assert u["input_tokens"] > 0 and u["output_tokens"] > 0
    assert u["total_tokens"] == u["input_tokens"] + u["output_tokens"]
    assert u["output_tokens_details"] == {"reasoning_tokens": 0}


async def test_it_answers_like_the_same_chat_request(client):
    chat = (await client.post("/v1/chat/completions", json={"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about Paris"}]})).json()
    body = (await respond(client, instructions="Be brief.")).json()
    assert body["output"][0]["content"][0]["text"] == chat["choices"][0]["message"]["content"]
    assert body["usage"]["input_tokens"] == chat["usage"]["prompt_tokens"]
    assert body["instructions"] == "Be brief."


async def test_max_output_tokens_makes_it_incomplete(client):
    body = (await respond(client, max_output_tokens=3)).json()
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["usage"]["output_tokens"] == 3 and body["max_output_tokens"] == 3


async def test_input_items(client):
    items = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
             {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
             {"type": "function_call_output", "call_id": "call_1", "output": "12 C and rain"}]
    body = (await respond(client, input=items, tools=[TOOL])).json()
    assert body["output"][0]["content"][0]["text"] == "Result: 12 C and rain"


async def test_function_tools(client):
    body = (await respond(client, input='CALL get_weather {"city": "Oslo"}', tools=[TOOL])).json()
    [call] = body["output"]
    assert call["type"] == "function_call" and call["name"] == "get_weather" and call["status"] == "completed"
    assert call["arguments"] == '{"city": "Oslo"}' and call["call_id"].startswith("call_")
    forced = (await respond(client, tools=[TOOL], tool_choice={"type": "function", "name": "get_weather"})).json()
    assert forced["output"][0]["name"] == "get_weather"
    assert (await respond(client, tools=[TOOL], tool_choice="none")).json()["output"][0]["type"] == "message"


async def test_stream_event_sequence(client):
    r = await respond(client, stream=True)
    assert r.headers["content-type"].startswith("text/event-stream") and "[DONE]" not in r.text
    evs = named_events(r.text)
    types = [t for t, _ in evs]
    n = types.count("response.output_text.delta")
    assert types == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", *["response.output_text.delta"] * n,
                     "response.output_text.done", "response.content_part.done", "response.output_item.done",
                     "response.completed"]
    assert [e["sequence_number"] for _, e in evs] == list(range(len(evs)))
    assert evs[0][1]["response"]["status"] == "in_progress" and evs[0][1]["response"]["output"] == []
    text = "".join(e["delta"] for t, e in evs if t == "response.output_text.delta")
    final = evs[-1][1]["response"]
    assert final["output"][0]["content"][0]["text"] == text == evs[-4][1]["text"]
    assert final["usage"]["output_tokens"] == n
    assert {e["item_id"] for t, e in evs if "item_id" in e} == {final["output"][0]["id"]}
    plain = (await respond(client)).json()
    assert plain["output"][0]["content"][0]["text"] == text and plain["usage"] == final["usage"]


async def test_stream_of_reasoning_then_text(client):
    r = await client.post("/v1/responses", json={"input": "Tell me about Paris", "stream": True},
                          headers={"x-sim-reasoning": "1"})
    evs = named_events(r.text)
    types = [t for t, _ in evs]
    assert types.index("response.reasoning_text.done") < types.index("response.output_text.delta")
    final = evs[-1][1]["response"]
    reasoning, message = final["output"]
    assert reasoning["type"] == "reasoning" and reasoning["content"][0]["text"]
    assert "".join(e["delta"] for t, e in evs if t == "response.reasoning_text.delta") == \
        reasoning["content"][0]["text"]
    assert final["usage"]["output_tokens_details"]["reasoning_tokens"] == types.count("response.reasoning_text.delta")
    assert [e["output_index"] for t, e in evs if t == "response.output_item.added"] == [0, 1]


async def test_stream_of_a_function_call(client):
    r = await respond(client, input='CALL get_weather {"city": "Oslo"}', tools=[TOOL], stream=True)
    evs = named_events(r.text)
    added = next(e for t, e in evs if t == "response.output_item.added")
    assert added["item"]["type"] == "function_call" and added["item"]["arguments"] == ""
    arguments = "".join(e["delta"] for t, e in evs if t == "response.function_call_arguments.delta")
    done = next(e for t, e in evs if t == "response.function_call_arguments.done")
    assert arguments == done["arguments"] == '{"city": "Oslo"}'


async def test_response_id_comes_from_x_request_id(client):
    r = await client.post("/v1/responses", json={"input": "hi"}, headers={"X-Request-Id": "abc"})
    assert r.json()["id"] == "resp_abc"


async def test_bad_requests_are_400_and_a_wrong_model_404(client):
    cases = [{"input": None}, {"input": ""}, {"input": []}, {"input": [{"type": "image_generation_call"}]},
             {"input": ["text"]}, {"previous_response_id": "resp_1"}, {"tools": [{"type": "web_search"}]},
             {"max_output_tokens": 0}, {"tool_choice": "required"},
             {"tools": [TOOL], "tool_choice": {"type": "function", "name": "nope"}}]
    for extra in cases:
        r = await client.post("/v1/responses", json={"input": "hi", **extra})
        assert r.status_code == 400, extra
        assert r.json()["error"]["type"] == "BadRequestError", extra
    r = await client.post("/v1/responses", json={"input": "hi", "model": "gpt-5"})
    assert r.status_code == 404


async def test_faults_apply(client):
    r = await client.post("/v1/responses", json={"input": "hi"}, headers={"x-sim-fault": "status=429"})
    assert r.status_code == 429 and r.json()["error"]["type"] == "TooManyRequestsError"
    r = await client.post("/v1/responses", json={"input": "hi", "stream": True},
                          headers={"x-sim-fault": "stream_error=3"})
    evs = named_events(r.text)
    assert r.status_code == 200 and len(evs) == 4 and evs[-1][0] == "error"
    assert evs[-1][1]["code"] == "server_error" and evs[-1][1]["message"]


async def test_counted_like_chat():
    async with sim_client() as c:
        await c.post("/v1/responses", json={"input": "hi", "max_output_tokens": 2})
        s = (await c.get("/sim/stats")).json()
        assert s["requests_total"] == 1 and s["request_success_total"]["length"] == 1
        assert s["generation_tokens_total"] == 2 and s["prompt_tokens_total"] > 0


@pytest.fixture(scope="module")
def sim():
    with live_sim(SimConfig(latency_model=True, step_base_ms=10, step_per_seq_ms=0, prefill_base_ms=5)) as (url, _):
        yield url


async def test_client_leaving_mid_stream_aborts_the_response(sim):
    await reset(sim)
    async with httpx.AsyncClient(base_url=sim, timeout=30) as c:
        body = {"input": "Tell me about Paris", "stream": True, "max_output_tokens": 300}
        async with c.stream("POST", "/v1/responses", json=body, headers={"x-sim-reasoning": "1"}) as r:
            async for line in r.aiter_lines():
                if "reasoning_text.delta" in line:
                    break
    s = await wait_stats(sim, lambda s: s["requests_aborted_total"] == 1)
    assert s["num_requests_running"] == 0 and s["request_success_total"]["abort"] == 1
