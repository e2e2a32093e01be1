"""Several upstreams as an operator configures them: `vgate serve --upstream` repeated, or
VGATE_UPSTREAMS; each upstream's models discovered; a call goes to one that serves its model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from app.procs import stop_process, wait_healthy
from tests.support import ROOT, free_port, gateway, spawn


@pytest.fixture(scope="module")
def two_models():
    """Two simulators serving different models."""
    pa, pb = free_port(), free_port()
    with spawn(["sim", "--model", "alpha", "--port", str(pa)], pa) as a, \
            spawn(["sim", "--model", "beta", "--port", str(pb)], pb) as b:
        yield a, b


def _serve(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port), *args], cwd=ROOT,
                            env={**os.environ, "VGATE_LOG_LEVEL": "WARNING", **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    wait_healthy(base, 30, proc, path="/healthz")
    return proc, base


@pytest.mark.parametrize("how", ["flags", "env"])
def test_each_configured_upstream_serves_its_own_models(two_models, how):
    a, b = two_models
    if how == "flags":
        proc, base = _serve(["--upstream", a, "--upstream", b], {})
    else:
        proc, base = _serve([], {"VGATE_UPSTREAMS": json.dumps([{"url": a, "name": "gpu-a"},
                                                                {"url": b, "name": "gpu-b", "weight": 2}])})
    try:
        listed = httpx.get(f"{base}/v1/models").json()
        answers = {m: httpx.post(f"{base}/v1/chat/completions", json={
            "model": m, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}) for m in ("alpha", "beta")}
        unknown = httpx.post(f"{base}/v1/chat/completions", json={"model": "gamma", "messages": [
            {"role": "user", "content": "hi"}]})
        metrics = httpx.get(f"{base}/metrics").text
    finally:
        stop_process(proc)
    assert sorted(m["id"] for m in listed["data"]) == ["alpha", "beta"]
    assert all(r.status_code == 200 and r.json()["model"] == m for m, r in answers.items())
    assert unknown.status_code == 404 and unknown.json()["error"]["available"] == ["alpha", "beta"]
    names = ("gpu-a", "gpu-b") if how == "env" else (a, b)
    for name in names:  # each upstream is its own series, and was picked for its model
        assert f'vgate_upstream_picks_total{{how="load",upstream="{name}"}} 1.0' in metrics


async def test_a_model_only_one_upstream_serves_never_goes_to_the_other(two_models):
    a, b = two_models
    async with gateway(a, upstreams=[{"url": a}, {"url": b}]) as gw:
        for _ in range(10):
            r = await gw.client.post("/predict", json={"signature": "q -> a", "inputs": {"q": "x"}, "model": "beta"})
            assert r.status_code == 200 and r.json()["model"] == "beta"
        picks = {u: sum(gw.metric("vgate_upstream_picks_total", upstream=u, how=how)
                        for how in ("load", "affinity", "spill")) for u in (a, b)}
    assert picks == {a: 0, b: 10}
