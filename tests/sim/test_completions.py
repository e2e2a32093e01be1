"""/v1/completions: shapes, streams, errors, and the chat machinery it shares (engine, faults, counters)."""

from __future__ import annotations

import asyncio
import json

import httpx
import jsonschema
import pytest

from app.sim.server import SimConfig
from tests.sim.helpers import events, live_sim, reset, sim_client, stats, wait_stats

PROMPT = "The capital of France is"
CHOICE_KEYS = {"index", "text", "logprobs", "finish_reason", "stop_reason"}


async def test_non_stream_shape(client):
    r = await client.post("/v1/completions", json={"model": "sim-model", "prompt": PROMPT})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body.keys() == {"id", "object", "created", "model", "choices", "usage"}
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion" and body["model"] == "sim-model"
    [choice] = body["choices"]
    assert choice.keys() == CHOICE_KEYS and choice["index"] == 0 and choice["text"]
    assert choice["logprobs"] is None and choice["stop_reason"] is None
    u = body["usage"]
    assert u["prompt_tokens"] == 5  # the prompt's own tokens: no chat template
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] > 5


async def test_max_tokens_defaults_to_16():
    async with sim_client(SimConfig(output_tokens=40)) as c:
        choice = (await c.post("/v1/completions", json={"prompt": PROMPT})).json()["choices"][0]
        assert choice["finish_reason"] == "length"
        r = (await c.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 30})).json()
        assert r["usage"]["completion_tokens"] == 30


async def test_a_list_of_prompts_is_one_choice_each_with_usage_summed(client):
    prompts = [PROMPT, "Bananas are", "Write about the moon"]
    body = (await client.post("/v1/completions", json={"prompt": prompts, "max_tokens": 8})).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    singles = [(await client.post("/v1/completions", json={"prompt": p, "max_tokens": 8})).json() for p in prompts]
    assert [c["text"] for c in body["choices"]] == [s["choices"][0]["text"] for s in singles]
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert body["usage"][key] == sum(s["usage"][key] for s in singles)


async def test_token_id_prompts(client):
    body = (await client.post("/v1/completions", json={"prompt": [[1, 2, 3], [4, 5]], "max_tokens": 3})).json()
    assert len(body["choices"]) == 2 and body["usage"]["prompt_tokens"] == 5
    one = (await client.post("/v1/completions", json={"prompt": [7, 8, 9, 10]})).json()
    assert one["usage"]["prompt_tokens"] == 4


async def test_stream_shape_and_usage_only_when_asked(client):
    body = {"prompt": PROMPT, "max_tokens": 6, "stream": True}
    r = await client.post("/v1/completions", json=body)
    assert r.headers["content-type"].startswith("text/event-stream")
    evs = events(r.text)
    assert evs[-1] == "[DONE]"
    chunks = evs[:-1]
    assert all(c["object"] == "text_completion" and c["id"].startswith("cmpl-") and "usage" not in c for c in chunks)
    assert all(c["choices"][0].keys() == CHOICE_KEYS for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 5 + ["length"]  # on the last token
    plain = (await client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 6})).json()
    assert "".join(c["choices"][0]["text"] for c in chunks) == plain["choices"][0]["text"]

    r = await client.post("/v1/completions", json={**body, "stream_options": {"include_usage": True}})
    *chunks, usage_chunk, done = events(r.text)
    assert done == "[DONE]" and usage_chunk["choices"] == [] and usage_chunk["object"] == "text_completion"
    assert usage_chunk["usage"] == plain["usage"] and len(chunks) == 6


async def test_stream_of_several_prompts(client):
    r = await client.post("/v1/completions", json={"prompt": ["a b c", "d e f"], "max_tokens": 3, "stream": True,
                                                   "stream_options": {"include_usage": True}})
    *chunks, usage_chunk, _ = events(r.text)
    by_index: dict[int, list[dict]] = {0: [], 1: []}
    for c in chunks:
        [choice] = c["choices"]
        by_index[choice["index"]].append(choice)
    assert all(len(v) == 3 and v[-1]["finish_reason"] == "length" for v in by_index.values())
    assert usage_chunk["usage"]["completion_tokens"] == 6


async def test_response_id_comes_from_x_request_id(client):
    r = await client.post("/v1/completions", json={"prompt": PROMPT}, headers={"X-Request-Id": "r-7"})
    assert r.json()["id"] == "cmpl-r-7"
    r = await client.post("/v1/completions", json={"prompt": PROMPT, "stream": True}, headers={"X-Request-Id": "r-8"})
    assert {e["id"] for e in events(r.text)[:-1]} == {"cmpl-r-8"}


async def test_structured_outputs_apply(client):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "n": {"type": "integer"}},
              "required": ["city", "n"], "additionalProperties": False}
    r = await client.post("/v1/completions", json={
        "prompt": PROMPT, "max_tokens": 200, "response_format": {"type": "json_schema",
                                                                 "json_schema": {"name": "x", "schema": schema}}})
    jsonschema.validate(json.loads(r.json()["choices"][0]["text"]), schema)


async def test_bad_requests_are_400_and_a_wrong_model_404(client):
    cases = [
        {}, {"prompt": []}, {"prompt": ""}, {"prompt": [1.5]}, {"prompt": [["a"]]}, {"prompt": {"text": "a"}},
        {"prompt": PROMPT, "echo": True}, {"prompt": PROMPT, "n": 2}, {"prompt": PROMPT, "max_tokens": 0},
        {"prompt": PROMPT, "stream_options": {"include_usage": True}}, {"prompt": PROMPT, "suffix": "!"},
        {"prompt": PROMPT, "seed": "x"},
    ]
    for body in cases:
        r = await client.post("/v1/completions", json=body)
        assert r.status_code == 400, body
        assert r.json()["error"].keys() == {"message", "type", "param", "code"}
        assert r.json()["error"]["type"] == "BadRequestError", body
    r = await client.post("/v1/completions", json={"prompt": PROMPT, "model": "gpt-4"})
    assert r.status_code == 404 and r.json()["error"]["message"] == "The model `gpt-4` does not exist."


async def test_prompt_longer_than_context_is_400():
    async with sim_client(SimConfig(max_model_len=10)) as c:
        r = await c.post("/v1/completions", json={"prompt": "word " * 20})
        assert r.status_code == 400 and "maximum context length is 10 tokens" in r.json()["error"]["message"]


async def test_faults_apply(client):
    r = await client.post("/v1/completions", json={"prompt": PROMPT},
                          headers={"x-sim-fault": "status=503;retry_after=2"})
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    assert r.json()["error"]["type"] == "ServiceUnavailableError"
    r = await client.post("/v1/completions", json={"prompt": PROMPT, "stream": True},
                          headers={"x-sim-fault": "stream_error=2"})
    evs = events(r.text)
    assert r.status_code == 200 and evs[-2]["error"]["code"] == 500 and evs[-1] == "[DONE]" and len(evs) == 4
    r = await client.post("/v1/completions", json={"prompt": PROMPT}, headers={"x-sim-fault": "malformed=1"})
    with pytest.raises(ValueError):
        json.loads(r.text)
    s = (await client.get("/sim/stats")).json()
    assert s["faults_injected_total"] == {"status": 1, "stream_error": 1, "malformed": 1}


async def test_counters(client):
    await client.post("/v1/completions", json={"prompt": ["a b", "c d e"], "max_tokens": 2})
    s = (await client.get("/sim/stats")).json()
    assert s["requests_total"] == 1  # one HTTP request ...
    assert s["request_success_total"]["length"] == 2  # ... of two engine requests, as vLLM counts them
    assert s["prompt_tokens_total"] == 5 and s["generation_tokens_total"] == 4


LATENCY = dict(latency_model=True, step_base_ms=10, step_per_seq_ms=0, prefill_base_ms=5, prefill_per_token_ms=0.01)


@pytest.fixture(scope="module")
def sim():
    with live_sim(SimConfig(**LATENCY)) as (url, _):
        yield url


async def test_the_prompts_of_one_request_run_in_one_batch(sim):
    await reset(sim)
    async with httpx.AsyncClient(base_url=sim, timeout=30) as c:
        r = await c.post("/v1/completions", json={"prompt": ["a", "b", "c", "d"], "max_tokens": 10, "min_tokens": 10})
    assert r.status_code == 200
    s = await stats(sim)
    assert s["peak_num_requests_running"] == 4 and s["generation_tokens_total"] == 40


async def test_client_leaving_mid_stream_aborts_the_request(sim):
    await reset(sim)
    async with httpx.AsyncClient(base_url=sim, timeout=30) as c:
        body = {"prompt": ["one", "two"], "max_tokens": 300, "min_tokens": 300, "stream": True}
        async with c.stream("POST", "/v1/completions", json=body) as r:
            got = 0
            async for line in r.aiter_lines():
                got += bool(line)
                if got == 4:
                    break
            assert (await stats(sim))["num_requests_running"] == 2
    s = await wait_stats(sim, lambda s: s["requests_aborted_total"] == 1)
    assert s["num_requests_running"] == 0 and s["request_success_total"]["abort"] == 2
    await asyncio.sleep(0.1)
    assert (await stats(sim))["generation_tokens_total"] < 100  # the engine stopped generating for both
