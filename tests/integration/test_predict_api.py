"""/predict through the HTTP API against the simulator."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.support import completion_chunks, fake_upstream, free_port, gateway, sim_reset, sim_stats


async def test_int_answer(sim_url):
    async with gateway(sim_url) as gw:
        r = await gw.client.post("/predict", json={"signature": "question -> answer: int",
                                                    "inputs": {"question": "What is 2 + 3?"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body["outputs"]["answer"], int)
    assert set(body["outputs"]) == {"answer"}
    assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] > 0
    assert body["cost_usd"] > 0 and body["latency_ms"] > 0 and body["model"] == "sim-model"
    assert body["request_id"] == r.headers["x-request-id"]
    assert float(r.headers["x-vgate-overhead-ms"]) >= 0


async def test_typed_outputs_match_declared_types(sim_url):
    sig = "context: list[str], question -> answer: str, confidence: float, tags: list[str], ok: bool"
    async with gateway(sim_url) as gw:
        r = await gw.client.post("/predict", json={"signature": sig,
                                                    "inputs": {"context": ["a", "b"], "question": "q?"}})
    out = r.json()["outputs"]
    assert isinstance(out["answer"], str) and isinstance(out["confidence"], float)
    assert isinstance(out["tags"], list) and isinstance(out["ok"], bool)


async def test_json_signature_form_with_literal(sim_url):
    spec = {"instructions": "Classify.", "inputs": {"text": {"type": "str"}},
            "outputs": {"label": {"type": "Literal['spam', 'ham']", "desc": "the class"}}}
    async with gateway(sim_url) as gw:
        r = await gw.client.post("/predict", json={"signature": spec, "inputs": {"text": "win money"}})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"]["label"] in ("spam", "ham")


async def test_chain_of_thought_returns_reasoning(sim_url):
    async with gateway(sim_url) as gw:
        r = await gw.client.post("/predict", json={"signature": "question -> answer: int",
                                                    "module": "chain_of_thought",
                                                    "inputs": {"question": "2+2?"}})
    body = r.json()
    assert r.status_code == 200, r.text
    assert isinstance(body["reasoning"], str) and body["reasoning"]
    assert set(body["outputs"]) == {"answer"} and isinstance(body["outputs"]["answer"], int)


async def test_request_id_is_echoed_and_sent_upstream(sim_url):
    async with gateway(sim_url) as gw:
        r = await gw.client.post("/predict", headers={"x-request-id": "client-42"},
                                 json={"signature": "q -> a", "inputs": {"q": "x"}})
    assert r.headers["x-request-id"] == "client-42" and r.json()["request_id"] == "client-42"


async def test_batch_of_200_all_in_flight_at_once_in_order(sim_slow_url):
    await sim_reset(sim_slow_url)
    batch = [{"question": f"What is {i} + 1?"} for i in range(200)]
    async with gateway(sim_slow_url) as gw:
        r = await gw.client.post("/predict", json={"signature": "question -> answer: int", "batch": batch})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [x["index"] for x in body["results"]] == list(range(200))
        assert all(isinstance(x["outputs"]["answer"], int) for x in body["results"])
        assert body["succeeded"] == 200 and body["failed"] == 0
        stats = await sim_stats(sim_slow_url)
        assert stats["peak_num_requests_running"] == 200  # the whole batch was in vLLM's batch at once
        assert body["usage"]["prompt_tokens"] == sum(x["usage"]["prompt_tokens"] for x in body["results"])
        assert body["cost_usd"] == pytest.approx(sum(x["cost_usd"] for x in body["results"]))
        metrics = (await gw.client.get("/metrics")).text
    assert gw.metric("vgate_prompt_tokens_total", model="sim-model", route="predict") == body["usage"]["prompt_tokens"]
    assert gw.metric("vgate_cost_usd_total", model="sim-model", route="predict") == pytest.approx(body["cost_usd"])
    assert 'vgate_completion_tokens_total{model="sim-model",route="predict"}' in metrics


async def test_each_batch_item_succeeds_or_fails_alone(sim_url):
    batch = [{"question": "ok"}, {"wrong": "field"}, {"question": "fine"}]
    async with gateway(sim_url) as gw:
        r = await gw.client.post("/predict", json={"signature": "question -> answer", "batch": batch})
    body = r.json()
    assert r.status_code == 200
    assert body["succeeded"] == 2 and body["failed"] == 1
    assert body["results"][1]["error"]["type"] == "invalid_request"
    assert "question" in body["results"][1]["error"]["message"]
    assert "outputs" in body["results"][0] and "outputs" in body["results"][2]


@pytest.mark.parametrize("sig,needle", [
    ("question answer", "->"),
    ("question -> answer: set[int]", "set"),
    ("question -> answer: __import__('os')", "answer"),
    ("q, q -> a", "duplicate"),
])
async def test_malformed_signature_is_422(sim_url, sig, needle):
    async with gateway(sim_url) as gw:
        r = await gw.client.post("/predict", json={"signature": sig, "inputs": {"question": "x"}})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_signature" and needle in err["message"]
    assert err["request_id"] == r.headers["x-request-id"]


async def test_missing_and_extra_inputs_are_422(sim_url):
    async with gateway(sim_url) as gw:
        missing = await gw.client.post("/predict", json={"signature": "a, b -> c", "inputs": {"a": "1"}})
        extra = await gw.client.post("/predict", json={"signature": "a -> c", "inputs": {"a": "1", "z": 2}})
    assert missing.status_code == 422 and "b" in missing.json()["error"]["message"]
    assert extra.status_code == 422 and "z" in extra.json()["error"]["message"]


async def test_non_json_body_is_400(sim_url):
    async with gateway(sim_url) as gw:
        r = await gw.client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_json"


@pytest.mark.parametrize("payload,needle", [
    ({"inputs": {"q": "x"}}, "signature"),
    ({"signature": "q -> a", "inputs": {"q": "x"}, "batch": [{"q": "y"}]}, "inputs"),
    ({"signature": "q -> a", "inputs": {"q": "x"}, "config": {"temprature": 1}}, "temprature"),
    ({"signature": "q -> a", "inputs": {"q": "x"}, "bogus": 1}, "bogus"),
    ({"signature": "q -> a", "inputs": {"q": "x"}, "module": "react"}, "module"),
])
async def test_request_shape_errors_are_422(sim_url, payload, needle):
    async with gateway(sim_url) as gw:
        r = await gw.client.post("/predict", json=payload)
    assert r.status_code == 422, r.text
    assert needle in json.dumps(r.json()["error"])


async def test_batch_too_large_is_422(sim_url):
    async with gateway(sim_url, max_batch_size=3) as gw:
        r = await gw.client.post("/predict", json={"signature": "q -> a", "batch": [{"q": "x"}] * 4})
    assert r.status_code == 422 and r.json()["error"]["type"] == "batch_too_large"


async def test_unreachable_upstream_is_503_with_retry_after():
    async with gateway(f"http://127.0.0.1:{free_port()}", max_retries=1, default_model="m") as gw:
        r = await gw.client.post("/predict", json={"signature": "q -> a", "inputs": {"q": "x"}})
        ready = await gw.client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["error"]["type"] == "upstream_unavailable" and r.json()["error"]["retryable"] is True
    assert int(r.headers["retry-after"]) >= 1
    assert ready.status_code == 503


async def test_truncated_output_is_a_clear_error(sim_url):
    async with gateway(sim_url) as gw:
        r = await gw.client.post("/predict", json={"signature": "q -> a, b: list[str]", "inputs": {"q": "x"},
                                                    "config": {"max_tokens": 2}})
        assert r.status_code == 502
        err = r.json()["error"]
        assert err["type"] == "output_truncated" and "max_tokens" in err["message"] and "raw" in err
        assert gw.metric("vgate_predictions_total", module="predict", outcome="truncated") == 1


async def test_output_failing_validation_carries_raw_text():
    """An upstream that ignores response_format: the reply is refused, never passed off as typed."""
    upstream = fake_upstream(completion_chunks('{"answer": "three"}'))
    async with gateway("http://up", default_model="m", lm_transport=upstream) as gw:
        r = await gw.client.post("/predict", json={"signature": "q -> answer: int", "inputs": {"q": "x"}})
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["type"] == "output_validation_error" and err["raw"] == '{"answer": "three"}'


async def test_programs_list_and_run(sim_url):
    async with gateway(sim_url) as gw:
        listed = (await gw.client.get("/predict/programs")).json()["programs"]
        names = {p["name"] for p in listed}
        assert {"qa", "sentiment", "extract_contacts", "math"} <= names
        r = await gw.client.post("/predict", json={"program": "sentiment", "inputs": {"text": "great!"}})
        assert r.status_code == 200, r.text
        assert r.json()["outputs"]["sentiment"] in ("positive", "negative", "neutral")
        assert r.json()["program"] == "sentiment"
        math = await gw.client.post("/predict", json={"program": "math", "inputs": {"problem": "3 apples + 4"}})
        assert "reasoning" in math.json() and isinstance(math.json()["outputs"]["answer"], int)
        missing = await gw.client.post("/predict", json={"program": "nope", "inputs": {}})
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "program_not_found"


async def test_health_ready_metrics_and_404_shape(sim_url):
    async with gateway(sim_url) as gw:
        assert (await gw.client.get("/healthz")).json() == {"status": "ok"}
        assert (await gw.client.get("/readyz")).status_code == 200
        await gw.client.post("/predict", json={"signature": "q -> a", "inputs": {"q": "x"}})
        text = (await gw.client.get("/metrics")).text
        nf = await gw.client.get("/nope")
    for name in ("vgate_requests_total", "vgate_request_duration_seconds", "vgate_upstream_ttft_seconds",
                 "vgate_upstream_request_duration_seconds", "vgate_upstream_in_flight", "vgate_prompt_tokens_total",
                 "vgate_cost_usd_total", "vgate_overhead_seconds"):
        assert name in text
    assert 'vgate_requests_total{method="POST",route="/predict",status="200"} 1.0' in text
    assert nf.status_code == 404 and nf.json()["error"]["type"] == "not_found"


@pytest.fixture
def own_latency_sim():
    """A latency-model simulator of this test's own: the shared one may still be busy with another
    test's sequences."""
    from tests.support import free_port, spawn

    port = free_port()
    with spawn(["sim", "--latency-model", "--port", str(port)], port) as url:
        yield url


def test_client_disconnect_cancels_the_batch_upstream(own_latency_sim):
    """A client that drops a big batch must not leave hundreds of sequences busy in vLLM."""
    import asyncio

    from tests.support import live_gateway

    sim_latency_url = own_latency_sim

    async def scenario(base: str, app) -> None:
        await sim_reset(sim_latency_url)
        batch = [{"question": f"Tell me everything about topic {i}"} for i in range(300)]
        async with httpx.AsyncClient(base_url=base, timeout=60) as c:
            post = asyncio.ensure_future(c.post("/predict", json={
                "signature": "question -> answer, details: list[str]", "batch": batch}))
            for _ in range(200):  # the client leaves once the batch is in vLLM's batch, not after a set time
                if (await sim_stats(sim_latency_url))["num_requests_running"] > 0:
                    break
                await asyncio.sleep(0.05)
            post.cancel()  # closes the connection
            with pytest.raises(asyncio.CancelledError):
                await post
        for _ in range(100):
            stats = await sim_stats(sim_latency_url)
            if stats["num_requests_running"] == 0 and stats["num_requests_waiting"] == 0:
                break
            await asyncio.sleep(0.05)
        assert stats["requests_aborted_total"] > 0
        assert stats["num_requests_running"] == 0 and stats["num_requests_waiting"] == 0
        cancelled = app.state.metrics.registry.get_sample_value(
            "vgate_upstream_requests_total", {"model": "sim-model", "outcome": "cancelled"})
        assert cancelled and cancelled >= stats["requests_aborted_total"]

    with live_gateway(sim_latency_url) as (base, app):
        asyncio.run(scenario(base, app))


@pytest.mark.parametrize("payload", [
    {"signature": "q -> a", "inputs": {"q": "\ud800"}},
    {"signature": "q -> a", "inputs": {"q": "x"}, "config": {"chat_template_kwargs": {"x": 1e999}}},
])
async def test_values_json_cannot_carry_are_422(sim_url, payload):
    async with gateway(sim_url) as gw:
        r = await gw.client.post("/predict", content=json.dumps(payload).encode(),
                                 headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["type"] == "invalid_request"


async def test_one_unencodable_batch_item_fails_alone(sim_url):
    batch = [{"q": "fine"}, {"q": "\ud800"}, {"q": "also fine"}]
    async with gateway(sim_url) as gw:
        r = await gw.client.post("/predict", content=json.dumps({"signature": "q -> a", "batch": batch}).encode(),
                                 headers={"content-type": "application/json"})
    body = r.json()
    assert r.status_code == 200 and body["succeeded"] == 2
    assert body["results"][1]["error"]["type"] == "invalid_request"


async def test_a_malformed_demo_fails_a_batch_once(sim_url):
    async with gateway(sim_url) as gw:
        r = await gw.client.post("/predict", json={"signature": "q -> a", "batch": [{"q": "x"}] * 3,
                                                    "demos": [{"zz": 1}]})
    assert r.status_code == 422 and "zz" in r.json()["error"]["message"]


async def test_a_number_that_overflows_is_refused_not_nulled():
    upstream = fake_upstream(completion_chunks('{"a": 1e999}'))
    async with gateway("http://up", default_model="m", lm_transport=upstream) as gw:
        r = await gw.client.post("/predict", json={"signature": "q -> a: float", "inputs": {"q": "x"}})
    assert r.status_code == 502 and r.json()["error"]["type"] == "output_validation_error"
    assert "out of range" in r.json()["error"]["message"]
