"""Errors are typed exceptions carrying the gateway's body; transport failures are
vgate.ConnectionError; retries only when asked for, and only what may succeed later."""

from __future__ import annotations

import httpx
import pytest
import vgate

from tests.support import free_port


def client_answering(status: int, body=None, headers=None, calls=None, **kw) -> vgate.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        if calls is not None:
            calls.append(request)
        if isinstance(body, (bytes, str)):
            return httpx.Response(status, content=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return vgate.Client("http://gw", transport=httpx.MockTransport(handler), **kw)


def error(type_: str, message: str = "m", **details) -> dict:
    return {"error": {"type": type_, "message": message, "request_id": "rid-1", **details}}


@pytest.mark.parametrize(("status", "type_", "cls"), [
    (400, "invalid_json", vgate.InvalidRequest),
    (413, "payload_too_large", vgate.InvalidRequest),
    (422, "invalid_signature", vgate.InvalidRequest),
    (401, "unauthorized", vgate.AuthenticationError),
    (403, "scope_missing", vgate.PermissionDenied),
    (404, "program_not_found", vgate.NotFound),
    (409, "session_busy", vgate.Conflict),
    (429, "rate_limited", vgate.RateLimited),
    (500, "internal_error", vgate.InternalServerError),
    (502, "upstream_error", vgate.UpstreamError),
    (503, "upstream_unavailable", vgate.UpstreamError),
    (504, "upstream_timeout", vgate.UpstreamError),
    (502, "output_validation_error", vgate.OutputValidationError),
])
def test_each_status_is_its_exception_with_the_gateways_body(status, type_, cls):
    body = error(type_, "what went wrong", limit="rpm")
    qa = vgate.Predict("q -> a", client=client_answering(status, body))
    with pytest.raises(cls) as info:
        qa(q="x")
    e = info.value
    assert isinstance(e, vgate.VGateError)
    assert (e.status, e.type, e.message, e.request_id) == (status, type_, "what went wrong", "rid-1")
    assert e.body == body and e.error["limit"] == "rpm"
    assert "what went wrong" in str(e) and "rid-1" in str(e)


def test_retry_after_comes_from_the_body_else_the_header():
    body = error("upstream_overloaded", retryable=True, retry_after_s=1.5)
    with pytest.raises(vgate.RateLimited) as info:
        vgate.Predict("q -> a", client=client_answering(429, body, {"retry-after": "2"}))(q="x")
    assert info.value.retry_after == 1.5 and info.value.retryable
    with pytest.raises(vgate.UpstreamError) as info:
        client = client_answering(503, error("upstream_unavailable"), {"retry-after": "3"})
        vgate.Predict("q -> a", client=client)(q="x")
    assert info.value.retry_after == 3.0


def test_output_validation_error_carries_the_raw_text_and_the_errors():
    body = error("output_validation_error", raw='{"a": "five"}', errors=[{"loc": ["a"], "msg": "not an int"}])
    with pytest.raises(vgate.OutputValidationError) as info:
        vgate.Predict("q -> a: int", client=client_answering(502, body))(q="x")
    assert info.value.raw == '{"a": "five"}'
    assert info.value.errors == [{"loc": ["a"], "msg": "not an int"}]


def test_an_answer_not_in_the_gateways_shape_is_still_a_typed_error():
    with pytest.raises(vgate.UpstreamError) as info:
        vgate.Predict("q -> a", client=client_answering(502, "<html>Bad Gateway</html>",
                                                        {"x-request-id": "rid-2"}))(q="x")
    assert info.value.type == "http_error" and "Bad Gateway" in info.value.message
    assert info.value.request_id == "rid-2"


def test_an_unreachable_gateway_is_a_connection_error():
    client = vgate.Client(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(vgate.ConnectionError) as info:
        vgate.Predict("q -> a", client=client)(q="x")
    assert info.value.status is None and info.value.type == "connection_error"
    assert isinstance(info.value, vgate.VGateError)


def test_a_timeout_is_a_timeout():
    def handler(request):
        raise httpx.ReadTimeout("slow", request=request)

    client = vgate.Client("http://gw", transport=httpx.MockTransport(handler), max_retries=3)
    with pytest.raises(vgate.Timeout):
        vgate.Predict("q -> a", client=client)(q="x")


def test_no_retries_unless_asked():
    calls: list = []
    with pytest.raises(vgate.UpstreamError):
        vgate.Predict("q -> a", client=client_answering(503, error("upstream_unavailable", retryable=True,
                                                                   retry_after_s=0), calls=calls))(q="x")
    assert len(calls) == 1


def test_retries_what_the_gateway_calls_retryable_waiting_retry_after():
    calls: list = []
    body = error("upstream_unavailable", retryable=True, retry_after_s=0.01)
    with pytest.raises(vgate.UpstreamError):
        vgate.Predict("q -> a", client=client_answering(503, body, calls=calls, max_retries=2))(q="x")
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(vgate.InvalidRequest):  # the caller's fault: the same request fails again
        vgate.Predict("q -> a", client=client_answering(422, error("invalid_request"), calls=calls,
                                                        max_retries=2))(q="x")
    assert len(calls) == 1
    calls.clear()
    with pytest.raises(vgate.RateLimited):  # a daily budget: not waited for
        vgate.Predict("q -> a", client=client_answering(429, error("budget_exceeded", retry_after_s=3600),
                                                        calls=calls, max_retries=2))(q="x")
    assert len(calls) == 1


def test_base_url_and_api_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("VGATE_BASE_URL", "http://from-env:9999/")
    monkeypatch.setenv("VGATE_API_KEY", "vg-secret")
    client = vgate.Client()
    assert client.base_url == "http://from-env:9999"
    assert client.headers["authorization"] == "Bearer vg-secret"
    vgate.configure()
    assert vgate.default_client().base_url == "http://from-env:9999"
    vgate.configure(base_url="http://explicit", api_key="k")
    assert vgate.default_client().base_url == "http://explicit"
    assert vgate.default_client().headers["authorization"] == "Bearer k"


def test_a_sync_call_with_an_async_client_says_what_to_do():
    with pytest.raises(TypeError, match="acall"):
        vgate.Predict("q -> a", client=vgate.AsyncClient("http://gw"))(q="x")


def test_the_distribution_is_small_and_standalone():
    from importlib.metadata import distribution
    from pathlib import Path

    dist = distribution("vgate-client")
    requires = sorted(r.split(">")[0].split("=")[0].strip() for r in dist.requires or [])
    assert requires == ["httpx", "pydantic"]
    assert dist.metadata["Requires-Python"] == ">=3.11"
    package = Path(vgate.__file__).parent
    for source in package.glob("*.py"):
        text = source.read_text()
        assert "from app" not in text and "import app" not in text, source  # never the gateway's code
