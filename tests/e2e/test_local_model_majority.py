"""Majority votes end to end against a real model (llama.cpp's server with SmolLM2-135M): its
server samples n choices in one request, as vLLM does, and each is held to the schema."""

from __future__ import annotations

from tests.support import gateway


async def test_majority_over_a_real_models_samples(local_llm_url):
    sig = "review -> sentiment: Literal['positive', 'negative']"
    async with gateway(local_llm_url) as gw:
        r = await gw.client.post("/predict", json={
            "signature": sig, "module": "majority", "config": {"n": 3, "temperature": 0.8, "max_tokens": 40},
            "inputs": {"review": "Great pasta, friendly staff."}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["outputs"]["sentiment"] in ("positive", "negative")
    assert body["samples"] == 3 and body["valid_samples"] == 3  # the grammar held every sample
    assert 1 / 3 <= body["agreement"]["sentiment"] <= 1
    assert body["usage"]["completion_tokens"] >= 3  # every sample's tokens
