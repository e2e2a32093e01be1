"""The dashboard and the alert rules name only metrics that exist: the gateway's from a live `vgate serve`
on the simulator after some traffic (a typed prediction, an agent run with a tool call, a streamed
passthrough call, a call shed with a 429), vLLM's from the simulator's /metrics (which exports
vLLM's names)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.support import alert_queries, dashboard_queries, metric_names
from tests.support import free_port, spawn

SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",), "summary": ("", "_sum", "_count", "_created")}


def exported(text: str) -> tuple[set[str], set[str]]:
    """(every sample name the exposition declares, the names that have samples now)."""
    declared, present = set(), set()
    for fam in text_string_to_metric_families(text):
        declared |= {fam.name + s for s in SUFFIXES.get(fam.type, ("",))}
        present |= {s.name for s in fam.samples}
    return declared, present


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    """The simulator with 20 ms decode steps and 150-token answers: a stream lasts 3 s."""
    port = free_port()
    with spawn(["sim", "--port", str(port), "--step-ms", "20", "--output-tokens", "150"], port) as url:
        yield url


@pytest.fixture(scope="module")
def live(sim: str) -> Iterator[str]:
    """`vgate serve` in its own process; one upstream slot and no queue, so a second call while a stream
    holds the slot is shed at once."""
    port = free_port()
    env = {"VGATE_MAX_INFLIGHT_PER_UPSTREAM": "1", "VGATE_MAX_QUEUED_PER_MODEL": "0", "VGATE_LOG_LEVEL": "WARNING",
           "VGATE_PRICES": json.dumps({"sim-model": {"input_per_1k": 0.001, "output_per_1k": 0.002}})}
    with spawn(["serve", "--port", str(port), "--upstream", sim], port, env=env) as url:
        yield url


@pytest.fixture(scope="module")
def scraped(live: str, sim: str) -> tuple[set[str], set[str], set[str]]:
    with httpx.Client(base_url=live, timeout=60) as c:
        r = c.post("/predict", json={"signature": "question -> answer: int", "inputs": {"question": "6*7?"}})
        assert r.status_code == 200, r.text
        r = c.post("/agent", json={"input": 'What is 6*7?\nCALL calculator {"expression": "6*7"}',
                                   "tools": ["calculator"]})
        assert r.status_code == 200 and "tool_result" in r.text, r.text
        body = {"messages": [{"role": "user", "content": "count"}], "max_tokens": 150, "stream": True}
        with c.stream("POST", "/v1/chat/completions", json=body) as stream:
            lines = stream.iter_lines()  # kept: a dropped iterator closes the response (a disconnect)
            next(lines)  # the first chunk: this stream holds the one slot now
            shed = c.post("/v1/chat/completions", json={**body, "stream": False})
            assert shed.status_code == 429, shed.text
        text = c.get("/metrics").text
    declared, present = exported(text)
    vllm_declared, _ = exported(httpx.get(f"{sim}/metrics", timeout=10).text)
    return declared, present, vllm_declared


def test_traffic_produced_the_series_the_dashboard_plots(scraped):
    _, present, _ = scraped
    for name in ("vgate_requests_total", "vgate_request_duration_seconds_bucket", "vgate_upstream_ttft_seconds_bucket",
                 "vgate_prompt_tokens_total", "vgate_completion_tokens_total", "vgate_cost_usd_total",
                 "vgate_upstream_picks_total", "vgate_tool_calls_total", "vgate_shed_total", "vgate_upstream_up"):
        assert name in present, name


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
@pytest.mark.parametrize("prefix", ["vgate_", "vllm:"])
def test_every_metric_named_exists(scraped, source, prefix):
    """Every gateway metric a query names is in the gateway's /metrics, every vLLM one in the simulator's."""
    declared, _, vllm_declared = scraped
    exported = declared if prefix == "vgate_" else vllm_declared
    queries = dashboard_queries() if source == "dashboard" else alert_queries()
    names = {n for n in metric_names(queries) if n.startswith(prefix)}
    assert names and sorted(names - exported) == []


def test_the_hpa_metric_is_exported(scraped):
    import yaml

    from tests.deploy.support import DEPLOY

    hpa = yaml.safe_load((DEPLOY / "k8s" / "hpa.yaml").read_text())
    pods_metric = next(m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods")
    assert pods_metric in scraped[0]
