"""Request bodies over the limit are refused with a 413 in the one error shape, before the upstream."""

from __future__ import annotations

import httpx

from tests.support import completion_chunks, fake_upstream, gateway, live_gateway

LIMIT = 64 * 1024


def _counting_upstream() -> tuple[httpx.MockTransport, list[str]]:
    calls: list[str] = []
    transport = fake_upstream(completion_chunks('{"a": "x"}'), check=lambda r: calls.append(r.url.path))
    return transport, calls


async def test_a_declared_length_over_the_limit_is_413_before_the_upstream():
    transport, calls = _counting_upstream()
    async with gateway("http://up", default_model="m", max_request_body_bytes=LIMIT, lm_transport=transport) as gw:
        big = {"signature": "q -> a", "inputs": {"q": "x" * (LIMIT + 1)}}
        r = await gw.client.post("/predict", json=big, headers={"x-request-id": "big-1"})
        small = await gw.client.post("/predict", json={"signature": "q -> a", "inputs": {"q": "x" * 1000}})
    assert r.status_code == 413
    err = r.json()["error"]
    assert err["type"] == "payload_too_large" and err["request_id"] == "big-1" and err["limit_bytes"] == LIMIT
    assert r.headers["x-request-id"] == "big-1"
    assert small.status_code == 200 and calls == ["/v1/chat/completions"]  # only the small one went upstream


def test_a_chunked_body_over_the_limit_is_413(sim_url):
    """No Content-Length (chunked): the body is counted as it streams in."""
    with live_gateway(sim_url, max_request_body_bytes=LIMIT) as (url, _):
        def body(n: int):
            yield b'{"signature": "q -> a", "inputs": {"q": "'
            for _ in range(n):
                yield b"x" * 1024
            yield b'"}}'

        big = httpx.post(f"{url}/predict", content=body(LIMIT // 1024 + 1),
                         headers={"content-type": "application/json"}, timeout=10)
        small = httpx.post(f"{url}/predict", content=body(2), headers={"content-type": "application/json"},
                           timeout=10)
    assert big.status_code == 413 and big.json()["error"]["type"] == "payload_too_large"
    assert small.status_code == 200, small.text
