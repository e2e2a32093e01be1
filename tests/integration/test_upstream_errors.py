"""What clients see when the upstream fails or misbehaves: clean messages, the right status,
retry hints only where a retry can help; the upstream's model list kept honest."""

from __future__ import annotations

import asyncio
import json

import httpx
from structlog.testing import capture_logs

from tests.support import completion_chunks, gateway

PREDICT = {"signature": "q -> a", "inputs": {"q": "x"}}
INTERNAL = "EngineCore died: CUDA error at /opt/vllm/worker.py:123 on node gpu-17.internal (10.2.3.4)"


def _models(*names: str) -> httpx.Response:
    return httpx.Response(200, json={"object": "list", "data": [{"id": n, "object": "model"} for n in names]})


def _sse(content: str, model: str = "m") -> httpx.Response:
    chunks = completion_chunks(content)
    for c in chunks:
        c["model"] = model
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})


def _upstream(status: int, body: dict) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return _models("m")
        return httpx.Response(status, json=body)

    return httpx.MockTransport(handler)


async def test_upstream_5xx_text_stays_in_the_log():
    async with gateway("http://up", default_model="m", max_retries=0,
                       lm_transport=_upstream(500, {"error": {"message": INTERNAL}})) as gw:
        with capture_logs() as logs:
            r = await gw.client.post("/predict", json=PREDICT, headers={"x-request-id": "leak-1"})
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["message"] == "upstream error (500)" and err["upstream_status"] == 500
    assert err["request_id"] == "leak-1"
    assert "gpu-17" not in r.text and "10.2.3.4" not in r.text and "/opt/vllm" not in r.text
    assert any(e.get("upstream_message") == INTERNAL for e in logs)  # the operator still sees it


async def test_error_chunk_text_mid_stream_stays_in_the_log():
    chunks = [{"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": "{"}}]},
              {"error": {"message": INTERNAL, "code": 500}}]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return _models("m")
        body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    async with gateway("http://up", default_model="m", lm_transport=httpx.MockTransport(handler)) as gw:
        r = await gw.client.post("/predict", json=PREDICT)
    assert r.status_code == 502 and r.json()["error"]["type"] == "upstream_stream_error"
    assert "gpu-17" not in r.text


async def test_upstream_400_about_the_request_stays_visible():
    msg = "This model's maximum context length is 4096 tokens. However, your prompt contains 9000 input tokens."
    async with gateway("http://up", default_model="m",
                       lm_transport=_upstream(400, {"error": {"message": msg, "type": "BadRequestError"}})) as gw:
        r = await gw.client.post("/predict", json=PREDICT)
    assert r.status_code == 400 and r.json()["error"]["message"] == msg


async def test_upstream_401_is_a_502_that_is_not_retryable():
    for status in (401, 403):
        async with gateway("http://up", default_model="m",
                           lm_transport=_upstream(status, {"error": "Unauthorized"})) as gw:
            r = await gw.client.post("/predict", json=PREDICT)
            retries = gw.metric("vgate_upstream_retries_total", model="m", reason=str(status))
        assert r.status_code == 502, status
        err = r.json()["error"]
        assert "retryable" not in err and "retry_after_s" not in err and "retry-after" not in r.headers
        assert err["type"] == "upstream_auth_error" and err["upstream_status"] == status
        assert retries == 0


async def test_a_model_list_that_is_not_json_is_a_502_not_a_500():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, text="<html>proxy login</html>")
        return httpx.Response(500)

    async with gateway("http://up", lm_transport=httpx.MockTransport(handler)) as gw:
        predict = await gw.client.post("/predict", json=PREDICT)
        models = await gw.client.get("/v1/models")
        agent = await gw.client.post("/agent", json={"input": "hi"}, headers={"accept": "application/json"})
    for r in (predict, models, agent):
        assert r.status_code == 502, r.text
        assert r.json()["error"]["type"] == "upstream_malformed"
        assert "proxy login" not in r.text


async def test_a_model_list_of_the_wrong_shape_is_a_502():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"data": [{"name": "no id"}]})

    async with gateway("http://up", lm_transport=httpx.MockTransport(handler)) as gw:
        r = await gw.client.get("/v1/models")
    assert r.status_code == 502 and r.json()["error"]["type"] == "upstream_malformed"


async def test_default_model_follows_the_upstreams_list():
    served = ["first-model"]
    called: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return _models(*served)
        model = json.loads(request.content)["model"]
        called.append(model)
        return _sse('{"a": "x"}', model=model)

    async with gateway("http://up", models_refresh_s=0.05, lm_transport=httpx.MockTransport(handler)) as gw:
        r1 = await gw.client.post("/predict", json=PREDICT)
        served[:] = ["second-model"]  # the operator swapped the model behind vLLM
        await asyncio.sleep(0.1)
        r2 = await gw.client.post("/predict", json=PREDICT)
    assert r1.json()["model"] == "first-model" and r2.json()["model"] == "second-model"
    assert called == ["first-model", "second-model"]


async def test_a_model_the_upstream_does_not_serve_is_a_404_before_any_call():
    """llama.cpp answers any model name with its own model: the gateway must not pass that off."""
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return _models("served-model")
        if request.method == "POST":
            calls.append(request.url.path)
        return _sse('{"a": "x"}', model="served-model")

    async with gateway("http://up", lm_transport=httpx.MockTransport(handler)) as gw:
        r = await gw.client.post("/predict", json={**PREDICT, "model": "gpt-4o"})
        agent = await gw.client.post("/agent", json={"input": "hi", "model": "gpt-4o"},
                                     headers={"accept": "application/json"})
        ok = await gw.client.post("/predict", json={**PREDICT, "model": "served-model"})
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["type"] == "model_not_found" and err["available"] == ["served-model"]
    assert agent.status_code == 404 and agent.json()["error"]["type"] == "model_not_found"
    assert ok.status_code == 200 and calls == ["/v1/chat/completions"]  # only the served name was sent


async def test_a_cancelled_first_listing_leaves_no_broken_state():
    """The caller left while /v1/models was slow: the next request lists again (it used to get a 500
    for models_refresh_s, from an assertion on a list that was never fetched)."""
    slow = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            if not slow.is_set():
                slow.set()
                await asyncio.sleep(5)
            return _models("m")
        return _sse('{"a": "x"}')

    async with gateway("http://up", lm_transport=httpx.MockTransport(handler)) as gw:
        first = asyncio.ensure_future(gw.state.lm.resolve_model(None))
        await slow.wait()
        first.cancel()
        r = await gw.client.post("/predict", json=PREDICT)
    assert r.status_code == 200, r.text


async def test_a_failed_listing_is_retried_within_a_second_not_after_the_refresh_period():
    listings: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            listings.append(1)
            if len(listings) == 1:
                raise httpx.ConnectError("vLLM is restarting")
            return _models("m")
        return _sse('{"a": "x"}')

    async with gateway("http://up", models_refresh_s=30, lm_transport=httpx.MockTransport(handler)) as gw:
        down = await gw.client.post("/predict", json=PREDICT)
        again = await gw.client.post("/predict", json=PREDICT)  # at once: answered from memory
        await asyncio.sleep(1.1)
        back = await gw.client.post("/predict", json=PREDICT)
    assert down.status_code == 503 and again.status_code == 503 and len(listings) == 2
    assert back.status_code == 200, back.text


async def test_a_4xx_from_the_model_listing_is_the_gateways_502_not_the_clients_400():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": {"message": "internal routing table at 10.0.0.7 is stale"}})

    async with gateway("http://up", lm_transport=httpx.MockTransport(handler)) as gw:
        r = await gw.client.post("/predict", json=PREDICT)
    assert r.status_code == 502 and r.json()["error"]["upstream_status"] == 400
    assert "10.0.0.7" not in r.text


async def test_a_burst_asking_for_an_unknown_model_lists_the_models_at_most_once_more():
    listings: list[int] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            listings.append(1)
            await asyncio.sleep(0.05)
            return _models("m")
        return _sse('{"a": "x"}')

    async with gateway("http://up", lm_transport=httpx.MockTransport(handler)) as gw:
        await gw.state.lm.list_models()
        await asyncio.sleep(1.1)  # past the once-a-second bound for a miss
        rs = await asyncio.gather(*(gw.client.post("/predict", json={**PREDICT, "model": "nope"}) for _ in range(50)))
    assert all(r.status_code == 404 for r in rs)
    assert len(listings) == 2  # the first listing, and one more for the whole burst


async def test_a_remembered_listing_error_does_not_grow_with_each_request():
    import traceback

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("down")

    async with gateway("http://up", lm_transport=httpx.MockTransport(handler)) as gw:
        sizes = []
        for _ in range(50):
            try:
                await gw.state.lm.list_models()
            except Exception as exc:  # noqa: BLE001 - the test measures the raised error
                sizes.append(len(traceback.extract_tb(exc.__traceback__)))
    assert len(sizes) == 50 and sizes[-1] == sizes[1]  # the same depth each time (it kept every caller's frames)
