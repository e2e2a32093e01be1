"""/v1/embeddings: shape, encodings, dimensions, determinism, errors, counters and the engine."""

from __future__ import annotations

import base64
import math
import struct

import httpx
import pytest

from app.sim.embeddings import embed
from app.sim.server import SimConfig
from tests.sim.helpers import live_sim, reset, sim_client, stats, wait_stats


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


async def test_shape(client):
    r = await client.post("/v1/embeddings", json={"model": "sim-model", "input": ["hello world", "bye"]})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body.keys() == {"id", "object", "created", "model", "data", "usage"}
    assert body["id"].startswith("embd-") and body["object"] == "list" and body["model"] == "sim-model"
    assert [(d["object"], d["index"]) for d in body["data"]] == [("embedding", 0), ("embedding", 1)]
    assert all(len(d["embedding"]) == 384 and abs(norm(d["embedding"]) - 1) < 1e-6 for d in body["data"])
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3, "completion_tokens": 0}


async def test_same_text_same_vector_other_text_other_vector(client):
    async def vector(text: str) -> list[float]:
        return (await client.post("/v1/embeddings", json={"input": text})).json()["data"][0]["embedding"]

    assert await vector("Paris") == await vector("Paris")
    assert await vector("Paris") != await vector("paris")  # the text itself counts, not only its words
    assert await vector("Paris is big") != await vector("big is Paris")


def test_texts_that_share_words_are_closer():
    a, b, c = (embed(t, 384) for t in ("the capital of France", "France and its capital", "a ripe banana"))

    def cos(x: list[float], y: list[float]) -> float:
        return sum(p * q for p, q in zip(x, y, strict=True))

    assert cos(a, b) > 0.15 > abs(cos(a, c))  # 2 of 4 words shared; unrelated texts are nearly orthogonal


async def test_base64_is_little_endian_float32_of_the_same_vector(client):
    floats = (await client.post("/v1/embeddings", json={"input": "Paris", "encoding_format": "float"})).json()
    b64 = (await client.post("/v1/embeddings", json={"input": "Paris", "encoding_format": "base64"})).json()
    raw = base64.b64decode(b64["data"][0]["embedding"])
    assert len(raw) == 384 * 4
    assert list(struct.unpack("<384f", raw)) == floats["data"][0]["embedding"]


async def test_dimensions_keep_the_leading_components_renormalised(client):
    full = (await client.post("/v1/embeddings", json={"input": "Paris"})).json()["data"][0]["embedding"]
    short = (await client.post("/v1/embeddings", json={"input": "Paris", "dimensions": 8})).json()
    vector = short["data"][0]["embedding"]
    assert len(vector) == 8 and abs(norm(vector) - 1) < 1e-6
    scale = norm(full[:8])
    assert all(abs(x - y / scale) < 1e-6 for x, y in zip(vector, full[:8], strict=True))


async def test_embedding_dim_is_configurable():
    async with sim_client(SimConfig(embedding_dim=16)) as c:
        r = await c.post("/v1/embeddings", json={"input": "x"})
        assert len(r.json()["data"][0]["embedding"]) == 16
        assert (await c.post("/v1/embeddings", json={"input": "x", "dimensions": 17})).status_code == 400


async def test_token_id_inputs(client):
    body = (await client.post("/v1/embeddings", json={"input": [[1, 2, 3], [4]]})).json()
    assert len(body["data"]) == 2 and body["usage"]["prompt_tokens"] == 4
    assert (await client.post("/v1/embeddings", json={"input": [5, 6]})).json()["usage"]["prompt_tokens"] == 2


async def test_bad_requests_are_400_and_a_wrong_model_404(client):
    cases = [{}, {"input": []}, {"input": ""}, {"input": [""]}, {"input": [[]]}, {"input": 3},
             {"input": "x", "encoding_format": "bytes"}, {"input": "x", "dimensions": 0},
             {"input": "x", "dimensions": 385}, {"input": "x", "dimensions": True}]
    for body in cases:
        r = await client.post("/v1/embeddings", json=body)
        assert r.status_code == 400, body
        assert r.json()["error"]["type"] == "BadRequestError", body
    r = await client.post("/v1/embeddings", json={"input": "x", "model": "text-embedding-3-small"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    async with sim_client(SimConfig(max_model_len=5)) as c:
        r = await c.post("/v1/embeddings", json={"input": "one two three four five six"})
        assert r.status_code == 400 and "maximum context length is 5 tokens" in r.json()["error"]["message"]


async def test_counters_and_faults(client):
    await client.post("/v1/embeddings", json={"input": ["a b", "c"]})
    s = (await client.get("/sim/stats")).json()
    assert s["requests_total"] == 1 and s["request_success_total"]["stop"] == 2
    assert s["prompt_tokens_total"] == 3 and s["generation_tokens_total"] == 0
    r = await client.post("/v1/embeddings", json={"input": "a"}, headers={"x-sim-fault": "status=500"})
    assert r.status_code == 500 and r.json()["error"]["type"] == "InternalServerError"
    assert (await client.get("/sim/stats")).json()["faults_injected_total"] == {"status": 1}


@pytest.fixture(scope="module")
def sim():
    with live_sim(SimConfig(latency_model=True, step_base_ms=10, prefill_base_ms=200,
                            prefill_per_token_ms=0)) as (url, _):
        yield url


async def test_embeddings_run_in_the_engine_and_a_client_leaving_aborts(sim):
    await reset(sim)
    async with httpx.AsyncClient(base_url=sim, timeout=30) as c:
        r = await c.post("/v1/embeddings", json={"input": "a b c"})
        assert r.status_code == 200 and r.elapsed.total_seconds() >= 0.2  # the prefill step
    async with httpx.AsyncClient(base_url=sim, timeout=httpx.Timeout(5, read=0.05)) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.post("/v1/embeddings", json={"input": "d e f"})
    s = await wait_stats(sim, lambda s: s["requests_aborted_total"] == 1)
    assert s["num_requests_running"] == 0 and s["request_success_total"] == {"stop": 1, "length": 0, "abort": 1}
    assert (await stats(sim))["prefix_cache_queries_total"] == 6
