"""Self-consistency (module majority, config.n) against the simulator: n samples from one upstream
request, voted per output field. The expected vote is computed here from the simulator's own answer
to the same request (asked directly, not through the gateway)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from app.errors import UpstreamError
from app.metrics import Metrics
from app.services.lm import LMClient
from tests.predict_support import Recorder, ask_sim
from tests.support import fake_upstream, gateway, make_settings, sim_reset, sim_stats

SIG = "text -> label: Literal['a', 'b', 'c'], flag: bool, score: int"
INPUTS = {"text": "Is the pasta good?"}
FIELDS = ("label", "flag", "score")


def expected_vote(samples: list[dict[str, Any]], fields=FIELDS) -> tuple[dict[str, Any], dict[str, float]]:
    """The field-wise mode, ties to the earliest sample: written out here, apart from the gateway's."""
    outputs, agreement = {}, {}
    for f in fields:
        keys = [json.dumps(s[f], sort_keys=True) for s in samples]
        counts = Counter(keys)
        best = max(counts.values())
        winner = next(k for k in keys if counts[k] == best)  # the earliest of the most frequent
        outputs[f] = json.loads(winner)
        agreement[f] = best / len(samples)
    return outputs, agreement


async def direct_samples(sim_url: str, body: dict[str, Any], fault: str | None = None) -> list[dict[str, Any]]:
    answer = await ask_sim(sim_url, body, fault)
    assert [c["index"] for c in answer["choices"]] == list(range(body.get("n", 1)))
    return [json.loads(c["message"]["content"]) for c in answer["choices"]]


async def test_majority_returns_the_field_wise_mode_of_the_samples(sim_url):
    rec = Recorder()
    async with gateway(sim_url, lm_transport=rec) as gw:
        r = await gw.client.post("/predict", json={"signature": SIG, "inputs": INPUTS, "module": "majority"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(rec.bodies) == 1 and rec.bodies[0]["n"] == 5  # the default n, in one request
    samples = await direct_samples(sim_url, rec.bodies[0])
    assert len({json.dumps(s, sort_keys=True) for s in samples}) > 1  # the samples differ: a real vote
    outputs, agreement = expected_vote(samples)
    assert body["outputs"] == outputs
    assert body["agreement"] == pytest.approx(agreement)
    assert body["samples"] == 5 and body["valid_samples"] == 5
    assert body["module"] == "majority" and "repairs" not in body and "reasoning" not in body


async def test_a_tie_goes_to_the_earliest_sample(sim_url):
    rec = Recorder()
    async with gateway(sim_url, lm_transport=rec) as gw:
        r = await gw.client.post("/predict", json={"signature": "text -> score: int", "inputs": INPUTS,
                                                    "module": "majority", "config": {"n": 2}})
    assert r.status_code == 200, r.text
    first, second = await direct_samples(sim_url, rec.bodies[0])
    assert first["score"] != second["score"]  # one vote each
    assert r.json()["outputs"] == {"score": first["score"]} and r.json()["agreement"] == {"score": 0.5}


async def test_n_samples_are_one_upstream_request_and_usage_is_the_simulators(sim_url):
    await sim_reset(sim_url)
    async with gateway(sim_url) as gw:
        r = await gw.client.post("/predict", json={"signature": SIG, "inputs": INPUTS, "module": "majority",
                                                    "config": {"n": 7, "temperature": 0.8}})
        valid = gw.metric("vgate_predict_samples_total", outcome="valid")
        ok = gw.metric("vgate_predictions_total", module="majority", outcome="ok")
        tokens = gw.metric("vgate_completion_tokens_total", model="sim-model", route="predict")
    assert r.status_code == 200, r.text
    body = r.json()
    stats = await sim_stats(sim_url)
    assert stats["requests_total"] == 1  # seven samples, one request: the prompt prefilled once
    assert stats["request_success_total"]["stop"] == 7
    assert body["usage"]["prompt_tokens"] == stats["prompt_tokens_total"]
    assert body["usage"]["completion_tokens"] == stats["generation_tokens_total"] == tokens
    assert body["samples"] == 7 and valid == 7 and ok == 1
    assert body["cost_usd"] > 0


async def test_chain_of_thought_votes_on_the_outputs_and_returns_a_winners_reasoning(sim_url):
    rec = Recorder()
    async with gateway(sim_url, lm_transport=rec) as gw:
        r = await gw.client.post("/predict", json={"signature": SIG, "inputs": INPUTS, "module": "chain_of_thought",
                                                    "config": {"n": 5}})
    assert r.status_code == 200, r.text
    body = r.json()
    samples = await direct_samples(sim_url, rec.bodies[0])
    assert all("reasoning" in s for s in samples)
    outputs, agreement = expected_vote(samples)
    assert body["outputs"] == outputs and set(body["agreement"]) == set(FIELDS)
    assert body["agreement"] == pytest.approx(agreement)
    agreeing = [s for s in samples if all(s[f] == outputs[f] for f in FIELDS)]
    first_winner = next(s for s in samples if s["label"] == outputs["label"])
    assert body["reasoning"] == (agreeing[0] if agreeing else first_winner)["reasoning"]
    assert body["samples"] == 5 and body["module"] == "chain_of_thought"


async def test_chain_of_thought_with_n_1_does_not_vote(sim_url):
    rec = Recorder()
    async with gateway(sim_url, lm_transport=rec) as gw:
        r = await gw.client.post("/predict", json={"signature": SIG, "inputs": INPUTS, "module": "chain_of_thought",
                                                    "config": {"n": 1}})
    assert r.status_code == 200 and "samples" not in r.json() and "n" not in rec.bodies[0]


async def test_module_predict_with_n_above_1_votes_too(sim_url):
    rec = Recorder()
    async with gateway(sim_url, lm_transport=rec) as gw:
        r = await gw.client.post("/predict", json={"signature": SIG, "inputs": INPUTS, "config": {"n": 3}})
    assert r.status_code == 200, r.text
    outputs, agreement = expected_vote(await direct_samples(sim_url, rec.bodies[0]))
    assert r.json()["outputs"] == outputs and r.json()["samples"] == 3 and r.json()["module"] == "predict"


async def test_invalid_samples_are_dropped_from_the_vote(sim_url):
    fault = "bad_output=type;bad_choices=2"  # the first two samples break their first field
    rec = Recorder(fault)
    async with gateway(sim_url, lm_transport=rec) as gw:
        r = await gw.client.post("/predict", json={"signature": SIG, "inputs": INPUTS, "module": "majority"})
        invalid = gw.metric("vgate_predict_samples_total", outcome="invalid")
    assert r.status_code == 200, r.text
    body = r.json()
    samples = await direct_samples(sim_url, rec.bodies[0], fault)
    assert [s["label"] for s in samples[:2]] == [12345, 12345]
    outputs, agreement = expected_vote(samples[2:])
    assert body["outputs"] == outputs and body["agreement"] == pytest.approx(agreement)
    assert body["samples"] == 5 and body["valid_samples"] == 3 and invalid == 2


async def test_no_valid_sample_is_a_502_with_every_samples_errors(sim_url):
    rec = Recorder("bad_output=text")
    async with gateway(sim_url, lm_transport=rec) as gw:
        r = await gw.client.post("/predict", json={"signature": SIG, "inputs": INPUTS, "module": "majority",
                                                    "config": {"n": 3}})
        bad = gw.metric("vgate_predictions_total", module="majority", outcome="invalid_output")
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["type"] == "output_validation_error" and err["samples"] == 3 and err["attempts"] == 1
    assert [e["loc"][:2] for e in err["errors"]] == [["sample", 0], ["sample", 1], ["sample", 2]]
    first = (await ask_sim(sim_url, rec.bodies[0], "bad_output=text"))["choices"][0]["message"]["content"]
    assert err["raw"] == first
    assert len(rec.bodies) == 1 and bad == 1  # no repair of a vote


async def test_every_sample_cut_off_is_output_truncated(sim_url):
    async with gateway(sim_url) as gw:
        r = await gw.client.post("/predict", json={"signature": SIG, "inputs": INPUTS, "module": "majority",
                                                    "config": {"n": 3, "max_tokens": 3}})
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["type"] == "output_truncated" and err["max_tokens"] == 3 and len(err["errors"]) == 3


async def test_majority_with_n_1_is_a_vote_of_one(sim_url):
    async with gateway(sim_url) as gw:
        r = await gw.client.post("/predict", json={"signature": SIG, "inputs": INPUTS, "module": "majority",
                                                    "config": {"n": 1}})
    body = r.json()
    assert r.status_code == 200 and body["samples"] == 1 and body["agreement"] == dict.fromkeys(FIELDS, 1.0)


async def test_each_batch_item_votes(sim_url):
    rec = Recorder()
    batch = [{"text": "first question"}, {"text": "second question"}]
    async with gateway(sim_url, lm_transport=rec) as gw:
        r = await gw.client.post("/predict", json={"signature": SIG, "batch": batch, "module": "majority",
                                                    "config": {"n": 3}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(rec.bodies) == 2 and all(b["n"] == 3 for b in rec.bodies)
    for item in body["results"]:
        body_for_item = next(b for b in rec.bodies if batch[item["index"]]["text"] in b["messages"][-1]["content"])
        outputs, agreement = expected_vote(await direct_samples(sim_url, body_for_item))
        assert item["outputs"] == outputs and item["agreement"] == pytest.approx(agreement)
        assert item["samples"] == 3
    assert body["usage"]["completion_tokens"] == sum(x["usage"]["completion_tokens"] for x in body["results"])


@pytest.mark.parametrize("stream", [False, True])
async def test_the_passthrough_relays_n_choices(sim_url, stream):
    req = {"model": "sim-model", "messages": [{"role": "user", "content": "Name a colour."}], "n": 3}
    if stream:
        req.update(stream=True, stream_options={"include_usage": True})
    await sim_reset(sim_url)
    async with gateway(sim_url) as gw:
        r = await gw.client.post("/v1/chat/completions", json=req)
        tokens = gw.metric("vgate_completion_tokens_total", model="sim-model", route="openai_chat")
    assert r.status_code == 200, r.text
    stats = await sim_stats(sim_url)
    if stream:
        chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
        indexes = {c["index"] for chunk in chunks for c in chunk["choices"]}
        usage = next(chunk["usage"] for chunk in chunks if chunk.get("usage"))
    else:
        indexes = {c["index"] for c in r.json()["choices"]}
        usage = r.json()["usage"]
    assert indexes == {0, 1, 2}
    assert usage["completion_tokens"] == stats["generation_tokens_total"] == tokens
    assert usage["prompt_tokens"] == stats["prompt_tokens_total"]


async def test_the_lm_client_reads_every_choice(sim_url):
    lm = LMClient(make_settings(sim_url), Metrics())
    messages = [{"role": "user", "content": "Tell me about prefix caching."}]
    try:
        r = await lm.chat(messages, n=3, max_tokens=40)
    finally:
        await lm.aclose()
    direct = await ask_sim(sim_url, {"model": "sim-model", "messages": messages, "n": 3, "max_tokens": 40})
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert [c.content for c in r.choices] == [c["message"]["content"] for c in direct["choices"]]
    assert [c.finish_reason for c in r.choices] == [c["finish_reason"] for c in direct["choices"]]
    assert r.content == r.choices[0].content and len({c.content for c in r.choices}) == 3
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (direct["usage"]["prompt_tokens"],
                                                                  direct["usage"]["completion_tokens"])


async def test_a_stream_that_ends_before_every_choice_finished_is_broken():
    def chunk(index: int, delta: dict, finish: str | None = None) -> dict:
        return {"id": "c", "model": "m", "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}

    cut = [chunk(0, {"content": "a"}), chunk(1, {"content": "b"}), chunk(0, {}, "stop")]  # choice 1 never ends
    whole = [*cut, chunk(1, {}, "stop"), {"id": "c", "model": "m", "choices": [],
                                          "usage": {"prompt_tokens": 3, "completion_tokens": 2}}]
    for chunks, done in ((whole, True), (cut, False)):
        lm = LMClient(make_settings("http://up", default_model="m", max_retries=0), Metrics(),
                      transport=fake_upstream(chunks, done=done))
        try:
            if done:
                r = await lm.chat([{"role": "user", "content": "x"}], n=2)
                assert [(c.content, c.finish_reason) for c in r.choices] == [("a", "stop"), ("b", "stop")]
                assert r.usage.completion_tokens == 2
            else:
                with pytest.raises(UpstreamError) as ei:
                    await lm.chat([{"role": "user", "content": "x"}], n=2)
                assert ei.value.type == "upstream_stream_error"
        finally:
            await lm.aclose()
