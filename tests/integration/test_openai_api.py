"""The OpenAI-compatible passthrough with the official ``openai`` client, unchanged, through a real
gateway (uvicorn) in front of the simulator: chat, streams, tools, structured outputs, models,
embeddings, completions, the Responses API — every call in the gateway's books."""

from __future__ import annotations

import asyncio
import json
import math
import re

import httpx
import openai
import pytest
from pydantic import BaseModel, Field

from tests.support import live_gateway, sim_reset, sim_stats

MODEL = "sim-model"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "minLength": 1}},
                   "required": ["city"], "additionalProperties": False}}}


class City(BaseModel):
    name: str
    population: int = Field(ge=0)
    landmarks: list[str]


@pytest.fixture(scope="module")
def gw(sim_url):
    with live_gateway(sim_url, passthrough_forward_headers=["x-sim-fault"]) as (base, app):
        yield base, app


@pytest.fixture
def client(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw[0]}/v1", api_key="unused", max_retries=0)


def metric(app, name: str, **labels: str) -> float:
    return app.state.metrics.registry.get_sample_value(name, labels) or 0.0


def test_chat_is_vllms_answer_and_is_counted(client, gw):
    _, app = gw
    before = metric(app, "vgate_upstream_requests_total", model=MODEL, outcome="ok")
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello"}], max_tokens=8)
    r = raw.parse()
    assert r.object == "chat.completion" and r.choices[0].message.content and r.usage.completion_tokens > 0
    assert raw.headers["x-request-id"] and float(raw.headers["x-vgate-overhead-ms"]) >= 0
    assert r.id.startswith(f"chatcmpl-{raw.headers['x-request-id']}-")  # the upstream saw the gateway's id
    assert metric(app, "vgate_upstream_requests_total", model=MODEL, outcome="ok") == before + 1
    assert metric(app, "vgate_completion_tokens_total", model=MODEL, route="openai_chat") >= r.usage.completion_tokens


def test_a_stream_relays_every_chunk_and_strips_the_usage_the_client_did_not_ask_for(client, gw):
    _, app = gw
    tokens_before = metric(app, "vgate_completion_tokens_total", model=MODEL, route="openai_chat")
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me a story"}], max_tokens=12, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)  # no usage-only chunk
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text
    # the gateway asked for usage for its own books: the tokens are counted all the same
    assert metric(app, "vgate_completion_tokens_total", model=MODEL, route="openai_chat") > tokens_before
    assert metric(app, "vgate_upstream_ttft_seconds_count", model=MODEL) > 0

    with_usage = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me a story"}], max_tokens=12, stream=True,
        stream_options={"include_usage": True}))
    assert with_usage[-1].choices == [] and with_usage[-1].usage.completion_tokens > 0  # asked for: kept


def test_tools_and_structured_outputs(client):
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"]
    parsed = client.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": "Describe a city"}], response_format=City,
        max_tokens=400)
    city = parsed.choices[0].message.parsed
    assert isinstance(city, City) and city.population >= 0


def test_models_embeddings_completions_and_responses(client, gw):
    _, app = gw
    assert [m.id for m in client.models.list()] == [MODEL]
    e = client.embeddings.create(model=MODEL, input=["a cat", "a cat", "a truck"])
    vectors = [d.embedding for d in e.data]
    assert vectors[0] == vectors[1] != vectors[2] and math.isclose(sum(x * x for x in vectors[0]), 1, rel_tol=1e-3)
    assert e.usage.prompt_tokens > 0
    assert metric(app, "vgate_prompt_tokens_total", model=MODEL, route="openai_embeddings") >= e.usage.prompt_tokens
    c = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6)
    assert c.choices[0].text and c.usage.completion_tokens > 0
    streamed = list(client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, stream=True))
    assert "".join(x.choices[0].text for x in streamed if x.choices) and all(x.usage is None for x in streamed)
    resp = client.responses.create(model=MODEL, input="Say hi", max_output_tokens=8)
    assert resp.output_text and resp.usage.output_tokens > 0
    events = list(client.responses.create(model=MODEL, input="Say hi", max_output_tokens=8, stream=True))
    assert events[-1].type == "response.completed"
    assert metric(app, "vgate_completion_tokens_total", model=MODEL, route="openai_responses") >= \
        resp.usage.output_tokens + events[-1].response.usage.output_tokens


def test_errors_keep_the_shape_openai_clients_parse(client):
    with pytest.raises(openai.NotFoundError) as ei:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert ei.value.body["type"] == "model_not_found" and ei.value.body["available"] == [MODEL]
    with pytest.raises(openai.BadRequestError) as ei:  # vLLM's own 400, as vLLM wrote it
        client.chat.completions.create(model=MODEL, messages=[])
    assert "messages" in ei.value.body["message"] and ei.value.body["code"] == 400


def test_guided_params_are_refused_naming_the_replacement(client, gw):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                       extra_body={"guided_json": {"type": "object"}})
    body = ei.value.body
    assert body["type"] == "unsupported_parameter" and body["param"] == "guided_json"
    assert "response_format" in body["message"] and "structured_outputs" in body["message"]


def test_guided_params_are_translated_when_the_operator_says_so(sim_url):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    with live_gateway(sim_url, translate_guided_params=True) as (base, _):
        c = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a number"}],
                                      extra_body={"guided_json": schema}, max_tokens=50)
        choice = c.completions.create(model=MODEL, prompt="Pick", extra_body={"guided_choice": ["yes", "no"]})
    assert isinstance(json.loads(r.choices[0].message.content)["n"], int)  # constrained, not free text
    assert choice.choices[0].text in ("yes", "no")


async def test_a_client_that_leaves_cancels_the_upstream_request_stream_and_not(gw, sim_url):
    """vLLM frees a sequence only when its connection closes: a client gone must close it, whether
    it was streaming or waiting for a whole answer (LiteLLM's proxy does not do the latter)."""
    base, app = gw
    slow = {"x-sim-fault": "slow_first_token_ms=3000"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "slow"}], "max_tokens": 5}
    for stream in (False, True):
        await sim_reset(sim_url)
        async with httpx.AsyncClient(base_url=base) as c:
            with pytest.raises(httpx.ReadTimeout):
                await c.post("/v1/chat/completions", json={**body, "stream": stream}, headers=slow,
                             timeout=httpx.Timeout(5, read=0.5))
        for _ in range(60):
            stats = await sim_stats(sim_url)
            if stats["requests_aborted_total"]:
                break
            await asyncio.sleep(0.05)
        assert stats["requests_aborted_total"] == 1, f"stream={stream}: the upstream request was left running"
        assert stats["num_requests_running"] == 0
    assert metric(app, "vgate_upstream_requests_total", model=MODEL, outcome="cancelled") >= 2


def test_priority_and_session_headers_are_checked(gw):
    base, _ = gw
    r = httpx.post(f"{base}/v1/chat/completions", headers={"x-vgate-priority": "urgent"},
                   json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_header"


async def test_client_headers_reach_the_upstream_only_when_the_operator_lists_them(sim_url):
    from tests.support import gateway

    fault = {"x-sim-fault": "status=500"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    async with gateway(sim_url) as plain, gateway(sim_url, passthrough_forward_headers=["X-Sim-Fault"]) as fwd:
        ignored = await plain.client.post("/v1/chat/completions", json=body, headers=fault)
        forwarded = await fwd.client.post("/v1/chat/completions", json=body, headers=fault)
    assert ignored.status_code == 200
    assert forwarded.status_code == 502 and forwarded.json()["error"]["message"] == "upstream error (500)"


def _data_lines(text: str) -> list[str]:
    return [line for line in text.split("\n") if line.startswith("data:")]


async def test_a_stream_is_relayed_as_the_upstreams_own_bytes_as_they_come(sim_latency_url):
    """A stream whose tokens come one engine step apart (not all in one read): every chunk arrives,
    byte for byte as vLLM wrote it (no re-serialising), the gateway's usage chunk left out."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 30,
            "min_tokens": 30, "seed": 7, "stream": True}
    headers = {"x-request-id": "same-id"}
    async with httpx.AsyncClient(timeout=30) as c:
        direct = await c.post(f"{sim_latency_url}/v1/chat/completions", json=body, headers=headers)
        with live_gateway(sim_latency_url) as (base, _):
            arrivals: list[float] = []
            relayed = ""
            async with c.stream("POST", f"{base}/v1/chat/completions", json=body, headers=headers) as r:
                async for piece in r.aiter_text():
                    arrivals.append(asyncio.get_running_loop().time())
                    relayed += piece
    def strip(line: str) -> str:  # each call has its own id and timestamp
        return re.sub(r'"id":"[^"]*",|"created":\d+,', "", line)

    want, got = _data_lines(direct.text), _data_lines(relayed)
    assert len(got) == len(want) == 30 + 3  # role chunk, 30 tokens, finish chunk, [DONE]: no usage chunk either
    assert [strip(x) for x in got] == [strip(x) for x in want]  # the same bytes
    assert arrivals[-1] - arrivals[0] > 0.1  # it came as it was made, not in one piece at the end


async def test_a_stream_flag_that_is_not_a_boolean_and_a_body_over_the_limit_are_clear_4xx(sim_url):
    from tests.support import gateway

    async with gateway(sim_url, max_request_body_bytes=2048) as gw:
        flag = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "stream": "true",
                                                                  "messages": [{"role": "user", "content": "x"}]})
        big = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": [
            {"role": "user", "content": "x" * 5000}]})
    assert flag.status_code == 400 and flag.json()["error"]["param"] == "stream"
    assert big.status_code == 413
    assert {"message", "type", "param", "code"} <= set(big.json()["error"]) and big.json()["error"]["code"] == 413
