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


async def _asgi(app, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[int, bytes]:
    """Drive the ASGI app with raw framing headers, as an HTTP server that does not enforce them would."""
    from app.middleware import BodyLimitMiddleware

    incoming = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict] = []

    async def receive():
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": headers, "state": {}}
    await BodyLimitMiddleware(app, max_bytes=LIMIT)(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def test_a_small_content_length_beside_transfer_encoding_does_not_bypass_the_limit():
    """With both headers the body is chunked (Transfer-Encoding wins, RFC 9112): h11 reads it so,
    and a Content-Length of 10 must not let megabytes through uncounted. Nor may a body without
    any framing header (HTTP/2)."""
    reached: list[int] = []

    async def app(scope, receive, send):
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        reached.append(len(body))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    big = [b"x" * 1024] * (LIMIT // 1024 + 1)
    both = [(b"content-length", b"10"), (b"transfer-encoding", b"chunked")]
    assert (await _asgi(app, both, big))[0] == 413
    assert (await _asgi(app, [], big))[0] == 413
    assert (await _asgi(app, both, [b"x" * 10]))[0] == 200 and reached == [10]
