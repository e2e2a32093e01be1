"""/metrics (vLLM names, own registry), /sim/stats and /sim/reset."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.sim.helpers import USER

LABELS = {"model_name": "sim-model", "engine": "0"}


async def scrape(client) -> dict[tuple[str, tuple], float]:
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def key(name: str, **labels: str) -> tuple[str, tuple]:
    return name, tuple(sorted(labels.items()))


async def test_metrics_names_labels_and_values(client):
    for body in ({"messages": USER}, {"messages": USER, "max_tokens": 2},
                 {"messages": USER, "stream": True}):
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
    await client.post("/v1/chat/completions", json={"messages": USER}, headers={"x-sim-fault": "status=503"})
    m = await scrape(client)
    for gauge in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        assert m[key(gauge, **LABELS)] == 0
    assert m[key("vllm:request_success_total", **LABELS, finished_reason="stop")] == 2
    assert m[key("vllm:request_success_total", **LABELS, finished_reason="length")] == 1
    assert m[key("vllm:request_success_total", **LABELS, finished_reason="abort")] == 0
    s = (await client.get("/sim/stats")).json()
    assert m[key("vllm:prompt_tokens_total", **LABELS)] == s["prompt_tokens_total"] > 0
    assert m[key("vllm:generation_tokens_total", **LABELS)] == s["generation_tokens_total"] > 2
    assert m[key("sim:requests_total")] == s["requests_total"] == 4
    assert m[key("sim:requests_aborted_total")] == s["requests_aborted_total"] == 0
    assert m[key("sim:peak_num_requests_running")] == s["peak_num_requests_running"] == 1
    assert m[key("sim:faults_injected_total", kind="status")] == 1


async def test_reset_zeroes_counters_and_peak(client):
    await client.post("/v1/chat/completions", json={"messages": USER})
    r = await client.post("/sim/reset")
    assert r.status_code == 200
    s = r.json()
    assert s == (await client.get("/sim/stats")).json()
    assert s["requests_total"] == s["peak_num_requests_running"] == s["generation_tokens_total"] == 0
    assert s["request_success_total"] == {"stop": 0, "length": 0, "abort": 0}
    m = await scrape(client)
    assert m[key("vllm:prompt_tokens_total", **LABELS)] == 0


async def test_each_app_has_its_own_registry():
    from tests.sim.helpers import sim_client

    async with sim_client() as a, sim_client() as b:
        await a.post("/v1/chat/completions", json={"messages": USER})
        assert (await a.get("/sim/stats")).json()["requests_total"] == 1
        assert (await b.get("/sim/stats")).json()["requests_total"] == 0
