"""Calls through every surface of a gateway in front of two simulators, for the fleet fault suites
(tests/integration/test_fleet_faults.py, test_fleet_streams.py): the surfaces, the fleet, one call
per surface and what its books must say."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import pytest

from tests.fleet_support import (
    MODEL,
    FaultTransport,
    Sim,
    metric_sum,
    sse_data,
    sse_events,
    upstreams,
)
from tests.support import gateway

SURFACES = ["v1", "v1_stream", "predict", "agent_json", "agent_sse"]
STREAMS = {"v1_stream", "agent_sse"}
QUIET = dict(log_format="json")  # a console traceback takes seconds to render on this machine
LEAKS = ("Simulated fault", "InternalServerError", "127.0.0.1")
_ids = itertools.count(1)


@dataclass
class Fleet:
    gw: object
    faults: FaultTransport
    sims: tuple[Sim, ...]
    settings: dict = field(default_factory=dict)

    @property
    def registry(self):
        return self.gw.state.metrics.registry  # type: ignore[attr-defined]

    async def books(self) -> dict[str, float]:
        """What the simulators received and what the gateway counted."""
        counts = await asyncio.gather(*(s.requests() for s in self.sims))
        reg = self.registry
        return {"sims": sum(counts), "retries": metric_sum(reg, "vgate_upstream_retries_total"),
                "calls": metric_sum(reg, "vgate_upstream_requests_total"),
                "ok": metric_sum(reg, "vgate_upstream_requests_total", outcome="ok")}


@asynccontextmanager
async def fleet(pair, **settings) -> AsyncIterator[Fleet]:
    a, b, _ = pair
    await asyncio.gather(a.reset(), b.reset())
    faults = FaultTransport()
    kw = dict(QUIET, request_timeout_s=10.0)
    kw.update(settings)
    async with gateway(a.url, upstreams=upstreams(a, b), lm_transport=faults, **kw) as gw:
        yield Fleet(gw, faults, (a, b), kw)


# --------------------------------------------------------------------------- calls, per surface


@dataclass
class Outcome:
    surface: str
    status: int
    headers: httpx.Headers
    text: str
    elapsed: float
    ok: bool = False
    error: dict | None = None  # the error the client got: the body's, or its stream's error event
    events: list = field(default_factory=list)  # v1_stream: data payloads; agent_sse: {"event", "data"}

    def describe(self) -> str:
        return f"{self.surface}: HTTP {self.status} after {self.elapsed:.2f} s: {self.text[:600]}"


def _body(surface: str, text: str) -> tuple[str, dict, dict]:
    if surface in ("v1", "v1_stream"):
        body = {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 30}
        if surface == "v1_stream":
            body["stream"] = True
        return "/v1/chat/completions", body, {}
    if surface == "predict":
        return "/predict", {"signature": "q -> a", "inputs": {"q": text}}, {}
    accept = "application/json" if surface == "agent_json" else "text/event-stream"
    return "/agent", {"input": text}, {"accept": accept}


async def call(fl: Fleet, surface: str, rid: str, *, bound: float | None = None) -> Outcome:
    """One request; fails the test if it is not answered within ``bound`` (default: the call's
    deadline, request_timeout_s, plus 5 s)."""
    path, body, headers = _body(surface, f"question {rid}")
    bound = bound if bound is not None else fl.settings["request_timeout_s"] + 5
    t0 = time.perf_counter()
    try:
        r = await asyncio.wait_for(fl.gw.client.post(path, json=body, headers={"x-request-id": rid, **headers}),
                                   bound)
    except TimeoutError:
        pytest.fail(f"{surface}: request {rid} hung past {bound} s (its deadline plus a margin)")
    o = Outcome(surface, r.status_code, r.headers, r.text, time.perf_counter() - t0)
    assert r.status_code != 500, f"an unhandled error, never a clean one: {o.describe()}"
    is_stream = r.status_code == 200 and r.headers.get("content-type", "").startswith("text/event-stream")
    if surface == "v1_stream" and is_stream:
        o.events = sse_data(r.text)
        for d in o.events:
            if d != "[DONE]":
                try:
                    json.loads(d)
                except ValueError:
                    pytest.fail(f"the client got an event that is not JSON: {d[:200]!r} in {o.describe()}")
        errors = [e["error"] for e in map(json.loads, (d for d in o.events if d != "[DONE]")) if "error" in e]
        o.error = errors[0] if errors else None
        o.ok = not errors and bool(o.events) and o.events[-1] == "[DONE]"
    elif surface == "agent_sse" and is_stream:
        o.events = sse_events(r.text)
        errors = [e["data"] for e in o.events if e["event"] == "error"]
        o.error = errors[0] if errors else None
        o.ok = bool(o.events) and o.events[-1]["event"] == "final"
    else:
        try:
            data = r.json()
        except ValueError:
            data = None
        if r.status_code == 200:
            want = {"v1": "choices", "v1_stream": "choices", "predict": "outputs", "agent_json": "answer",
                    "agent_sse": "answer"}[surface]
            o.ok = isinstance(data, dict) and want in data
        elif isinstance(data, dict) and isinstance(data.get("error"), dict):
            o.error = data["error"]
    return o


def assert_clear_error(o: Outcome, type_: str, status: int) -> None:
    """The error in the surface's own shape: a JSON error with the status (vLLM's shape on /v1), or on
    the agent's event stream an ``error`` event carrying it; no upstream text."""
    assert not o.ok and o.error is not None, f"expected a clear {type_} error: {o.describe()}"
    assert o.error.get("type") == type_, f"expected {type_}: {o.describe()}"
    assert o.error.get("message"), o.describe()
    if o.surface == "agent_sse" and o.status == 200:
        assert o.error.get("status") == status, o.describe()
    else:
        assert o.status == status, o.describe()
    if o.surface.startswith("v1"):
        assert {"message", "type", "param", "code"} <= o.error.keys(), f"vLLM's error shape: {o.describe()}"
        assert o.error["code"] == status
    for leak in LEAKS:
        assert leak not in o.text, f"upstream text {leak!r} reached the client: {o.describe()}"


def assert_books(before: dict, after: dict, *, calls: int = 1, replays: int = 0) -> None:
    """Every request a simulator received was a call's first attempt or a retry the gateway counted;
    each call was booked once in vgate_upstream_requests_total, however many attempts it took (a
    /predict replay books its broken attempt too)."""
    d = {k: after[k] - before[k] for k in before}
    assert d["sims"] == calls + d["retries"], (
        f"the simulators received {d['sims']} requests for {calls} call(s) and {d['retries']} counted retries")
    assert d["calls"] == calls + replays, (
        f"vgate_upstream_requests_total rose by {d['calls']} for {calls} call(s) and {replays} replay(s)")


def retries_by_model(fl: Fleet, reason: str) -> dict[str, float]:
    return {s.labels["model"]: s.value for f in fl.registry.collect() for s in f.samples
            if s.name == "vgate_upstream_retries_total" and s.labels.get("reason") == reason}


def assert_retries(fl: Fleet, reason: str, n: int) -> None:
    """``n`` retries for ``reason`` (whatever the model label: test_metrics_name_the_model checks it)."""
    got = retries_by_model(fl, reason)
    assert sum(got.values()) == n, f"vgate_upstream_retries_total{{reason={reason!r}}}: expected {n}, got {got}"


def distinct_upstreams(fl: Fleet, rid: str, n: int) -> list[str]:
    where = [a.upstream for a in fl.faults.attempts_of(rid)]
    assert len(where) == n, f"{rid}: expected {n} upstream attempts, got {where}"
    return where
