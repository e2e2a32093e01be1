"""The wire format: shapes of responses, streams and errors, as vLLM 0.33 sends them."""

from __future__ import annotations

from app.sim.server import SimConfig
from tests.sim.helpers import USER, events, sim_client

CHUNK_KEYS = {"id", "object", "created", "model", "choices"}


async def test_non_stream_shape(client):
    r = await client.post("/v1/chat/completions", json={"model": "sim-model", "messages": USER})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["id"].startswith("chatcmpl-") and len(body["id"]) > len("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "sim-model"
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    message = choice["message"]
    assert message["role"] == "assistant"
    assert isinstance(message["content"], str) and message["content"]
    assert message["tool_calls"] == [] and "reasoning" not in message
    u = body["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert u["prompt_tokens"] > 0 and u["completion_tokens"] > 0


async def test_stream_shape_and_order(client):
    r = await client.post("/v1/chat/completions", json={
        "messages": USER, "stream": True, "stream_options": {"include_usage": True}})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    evs = events(r.text)
    assert evs[-1] == "[DONE]"
    chunks = evs[:-1]
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    for c in chunks:
        assert c.keys() >= CHUNK_KEYS and c["object"] == "chat.completion.chunk" and c["model"] == "sim-model"
    first, *deltas, finish, usage_chunk = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert first["choices"][0]["finish_reason"] is None
    assert deltas and all(c["choices"][0]["finish_reason"] is None for c in deltas)
    assert all(set(c["choices"][0]["delta"]) == {"content"} for c in deltas)
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == len(deltas)  # one token per chunk

    # the same request without streaming says the same thing
    plain = (await client.post("/v1/chat/completions", json={"messages": USER})).json()
    text = "".join(c["choices"][0]["delta"]["content"] for c in deltas)
    assert text == plain["choices"][0]["message"]["content"]
    assert usage_chunk["usage"] == plain["usage"]


async def test_stream_without_usage_ends_with_finish_then_done(client):
    r = await client.post("/v1/chat/completions", json={"messages": USER, "stream": True})
    evs = events(r.text)
    assert evs[-1] == "[DONE]"
    assert evs[-2]["choices"][0]["finish_reason"] == "stop"
    assert all(e == "[DONE]" or "usage" not in e for e in evs)


async def test_response_id_comes_from_x_request_id(client):
    r = await client.post("/v1/chat/completions", json={"messages": USER}, headers={"X-Request-Id": "req-42"})
    assert r.json()["id"] == "chatcmpl-req-42"
    r = await client.post("/v1/chat/completions", json={"messages": USER, "stream": True},
                          headers={"X-Request-Id": "req-43"})
    assert {e["id"] for e in events(r.text)[:-1]} == {"chatcmpl-req-43"}


async def test_model_may_be_omitted_and_a_wrong_one_is_404(client):
    assert (await client.post("/v1/chat/completions", json={"messages": USER})).status_code == 200
    r = await client.post("/v1/chat/completions", json={"model": "gpt-4", "messages": USER})
    assert r.status_code == 404
    assert r.json() == {"error": {"message": "The model `gpt-4` does not exist.", "type": "NotFoundError",
                                  "param": "model", "code": 404}}


async def test_bad_requests_are_400_with_vllm_error_body(client):
    cases = [
        {"messages": USER, "stream": False, "stream_options": {"include_usage": True}},
        {"messages": USER, "tools": []},
        {"messages": []},
        {"messages": USER, "max_tokens": 0},
        {"messages": USER, "tool_choice": "required"},
        {"messages": USER, "tools": [{"type": "function", "function": {"name": "f"}}],
         "tool_choice": {"type": "function", "function": {"name": "g"}}},
        {"messages": USER, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
        {"messages": USER, "structured_outputs": {"json": {"type": "object"}, "choice": ["a"]}},
    ]
    for body in cases:
        r = await client.post("/v1/chat/completions", json=body)
        assert r.status_code == 400, body
        error = r.json()["error"]
        assert error["type"] == "BadRequestError" and error["code"] == 400 and error["message"], body
    r = await client.post("/v1/chat/completions", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["type"] == "BadRequestError"


async def test_stream_options_message_matches_vllm(client):
    r = await client.post("/v1/chat/completions",
                          json={"messages": USER, "stream_options": {"include_usage": True}})
    assert r.json()["error"]["message"] == "Stream options can only be defined when `stream=True`."


async def test_prompt_longer_than_context_is_400():
    async with sim_client(SimConfig(max_model_len=50)) as c:
        long = [{"role": "user", "content": "word " * 100}]
        r = await c.post("/v1/chat/completions", json={"messages": long})
        assert r.status_code == 400
        message = r.json()["error"]["message"]
        assert message.startswith("This model's maximum context length is 50 tokens. However, your prompt "
                                  "contains 108 input tokens.")  # 101 tokens + 4 per message + 3


async def test_output_is_cut_at_max_tokens_with_finish_length(client):
    r = await client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 3})
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3
    r = await client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 3, "stream": True})
    evs = events(r.text)
    assert len(evs) == 1 + 3 + 1 + 1  # role, 3 tokens, finish, [DONE]
    assert evs[-2]["choices"][0]["finish_reason"] == "length"


async def test_max_completion_tokens_wins_over_max_tokens(client):
    r = await client.post("/v1/chat/completions",
                          json={"messages": USER, "max_tokens": 2, "max_completion_tokens": 5, "min_tokens": 50})
    assert r.json()["usage"]["completion_tokens"] == 5


async def test_min_tokens_and_output_tokens_set_the_length(client):
    r = await client.post("/v1/chat/completions", json={"messages": USER, "min_tokens": 60})
    assert r.json()["usage"]["completion_tokens"] >= 60
    async with sim_client(SimConfig(output_tokens=20)) as c:
        r = await c.post("/v1/chat/completions", json={"messages": USER})
        assert r.json()["usage"]["completion_tokens"] == 20
        assert r.json()["choices"][0]["finish_reason"] == "stop"


async def test_deterministic_for_seed_and_prompt(client):
    async def content(**extra):
        r = await client.post("/v1/chat/completions", json={"messages": USER, **extra})
        return r.json()["choices"][0]["message"]["content"]

    assert await content() == await content()
    assert await content(seed=7) == await content(seed=7)
    answers = {await content(seed=s) for s in range(8)}
    assert len(answers) > 1  # the seed matters


async def test_reasoning_by_header_kwargs_and_config(client):
    r = await client.post("/v1/chat/completions", json={"messages": USER}, headers={"x-sim-reasoning": "1"})
    message = r.json()["choices"][0]["message"]
    assert message["reasoning"] and message["content"]

    r = await client.post("/v1/chat/completions", json={
        "messages": USER, "stream": True, "chat_template_kwargs": {"enable_thinking": True}})
    deltas = [e["choices"][0]["delta"] for e in events(r.text)[1:-2]]
    kinds = [next(iter(d)) for d in deltas]
    assert kinds[0] == "reasoning" and kinds[-1] == "content"
    assert kinds == sorted(kinds, key=lambda k: k != "reasoning")  # all reasoning before any content

    async with sim_client(SimConfig(reasoning=True)) as c:
        on = (await c.post("/v1/chat/completions", json={"messages": USER})).json()
        assert on["choices"][0]["message"]["reasoning"]
        off = (await c.post("/v1/chat/completions", json={
            "messages": USER, "chat_template_kwargs": {"enable_thinking": False}})).json()
        assert "reasoning" not in off["choices"][0]["message"]
        off = (await c.post("/v1/chat/completions", json={"messages": USER},
                            headers={"x-sim-reasoning": "0"})).json()
        assert "reasoning" not in off["choices"][0]["message"]


async def test_models_health_version(client):
    r = await client.get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    [model] = body["data"]
    assert model["id"] == "sim-model" and model["object"] == "model" and model["owned_by"] == "vllm"
    assert model["root"] == "sim-model" and model["parent"] is None and model["max_model_len"] == 8192
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/version")).json() == {"version": "0.33.0"}
    assert (await client.get("/nope")).status_code == 404
    assert (await client.get("/v1/chat/completions")).status_code == 405


async def test_configured_model_name_and_root():
    async with sim_client(SimConfig(model="qwen3", model_root="Qwen/Qwen3-8B", max_model_len=4096)) as c:
        [model] = (await c.get("/v1/models")).json()["data"]
        assert (model["id"], model["root"], model["max_model_len"]) == ("qwen3", "Qwen/Qwen3-8B", 4096)
        r = await c.post("/v1/chat/completions", json={"model": "qwen3", "messages": USER})
        assert r.json()["model"] == "qwen3"
        assert (await c.post("/v1/chat/completions", json={"model": "sim-model", "messages": USER})).status_code == 404
