"""cost_usd in responses is rounded: no float noise such as 0.0024000000000000002."""

from __future__ import annotations

import pytest

from tests.support import completion_chunks, fake_upstream, gateway

# 11 prompt and 13 completion tokens at 0.1 USD per 1k each: (1.1 + 1.3) / 1000 = 0.0024000000000000002
PRICE = {"input_per_1k": 0.1, "output_per_1k": 0.1}


def _gateway(content: str = '{"a": "yes"}'):
    upstream = fake_upstream(completion_chunks(content, prompt_tokens=11, completion_tokens=13))
    return gateway("http://up", default_model="m", lm_transport=upstream, default_price=PRICE)


def test_the_price_gives_float_noise():
    assert (11 * 0.1 + 13 * 0.1) / 1000 != 0.0024


async def test_single_prediction_cost_is_rounded():
    async with _gateway() as gw:
        r = await gw.client.post("/predict", json={"signature": "q -> a", "inputs": {"q": "x"}})
    assert r.status_code == 200, r.text
    assert r.json()["cost_usd"] == 0.0024
    assert '"cost_usd":0.0024,' in r.text.replace(" ", "")


async def test_batch_costs_are_rounded():
    async with _gateway() as gw:
        r = await gw.client.post("/predict", json={"signature": "q -> a", "batch": [{"q": "x"}] * 3})
    body = r.json()
    assert r.status_code == 200, r.text
    assert [item["cost_usd"] for item in body["results"]] == [0.0024] * 3
    assert body["cost_usd"] == 0.0072


@pytest.mark.parametrize("accept", ["application/json"])
async def test_agent_final_document_cost_is_rounded(accept):
    async with _gateway("hello there") as gw:
        r = await gw.client.post("/agent", headers={"accept": accept}, json={"input": "hi", "tools": []})
    assert r.status_code == 200, r.text
    assert r.json()["cost_usd"] == 0.0024
