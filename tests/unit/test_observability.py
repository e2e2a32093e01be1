"""Request ids, the overhead header and JSON logs with the request id on every line."""

from __future__ import annotations

import json
import re

import httpx

from app.logging import sanitize_request_id
from tests.support import completion_chunks, fake_upstream, gateway


def test_request_id_sanitising():
    assert sanitize_request_id("abc-123_x.y:z") == "abc-123_x.y:z"
    for bad in (None, "", "a b", "x" * 200, "evil\nheader", "é"):
        rid = sanitize_request_id(bad)
        assert rid != bad and len(rid) == 32


async def test_json_logs_carry_the_request_id_on_every_line(capsys):
    def check(request: httpx.Request) -> None:
        assert re.fullmatch(r"req-7-\d+", request.headers["x-request-id"])  # <request id>-<n>: one per upstream call

    upstream = fake_upstream(completion_chunks('{"a": "x"}', prompt_tokens=9, completion_tokens=3), check=check)
    async with gateway("http://up", default_model="m", log_format="json", log_level="INFO",
                       lm_transport=upstream) as gw:
        r = await gw.client.post("/predict", headers={"x-request-id": "req-7"},
                                 json={"signature": "q -> a", "inputs": {"q": "hello"}})
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "req-7" and float(r.headers["x-vgate-overhead-ms"]) >= 0
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    request_lines = [x for x in lines if x.get("request_id") == "req-7"]
    events = {x["event"] for x in request_lines}
    assert {"upstream_call", "request"} <= events
    call = next(x for x in request_lines if x["event"] == "upstream_call")
    assert call["prompt_tokens"] == 9 and call["completion_tokens"] == 3 and call["model"] == "m"
    assert {"latency_ms", "ttft_ms", "cost_usd", "tokens_per_s"} <= set(call)
    # prompts and completions are not logged unless switched on
    assert "hello" not in json.dumps(lines)
    access = next(x for x in request_lines if x["event"] == "request")
    assert access["status"] == 200 and access["route"] == "/predict" and "overhead_ms" in access


async def test_unexpected_error_is_a_json_500_with_the_request_id(capsys):
    async with gateway("http://up", default_model="m", log_format="json", log_level="INFO") as gw:

        @gw.app.get("/boom")
        async def boom():
            raise RuntimeError("secret detail")

        r = await gw.client.get("/boom", headers={"x-request-id": "rid-500"})
        weird = await gw.client.request("FOO1", "/predict")
    assert r.status_code == 500 and r.headers["x-request-id"] == "rid-500"
    assert r.json()["error"] == {"type": "internal_error", "request_id": "rid-500",
                                 "message": "internal error; the request id is in the logs"}
    assert "secret" not in r.text
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    crash = next(x for x in lines if x["event"] == "unhandled_error")
    assert crash["request_id"] == "rid-500" and "RuntimeError" in crash["exception"]
    assert weird.status_code == 405
    assert gw.metric("vgate_requests_total", route="/predict", method="OTHER", status="405") == 1


async def test_a_wrong_method_on_a_plain_route_is_counted_under_its_route():
    """The passthrough's routes and POST /predict's are plain Starlette routes: a 405 there is labelled
    with the route, as on FastAPI's routes, not as "unmatched"."""
    async with gateway("http://up", default_model="m") as gw:
        answers = [await gw.client.get(path) for path in ("/v1/chat/completions", "/predict")]
    assert [r.status_code for r in answers] == [405, 405]
    for path in ("/v1/chat/completions", "/predict"):
        assert gw.metric("vgate_requests_total", route=path, method="GET", status="405") == 1, path
