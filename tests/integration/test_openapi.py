"""The OpenAPI document describes what the gateway really answers, and /docs works offline."""

from __future__ import annotations

import re

import pytest

from app.main import create_app
from tests.support import gateway, make_settings

# route -> the error statuses it can answer (4xx/5xx), all in the {"error": {...}} shape
ERRORS = {
    ("post", "/predict"): {400, 404, 413, 422, 500, 502, 503, 504},
    ("get", "/predict/programs"): {500},
    ("post", "/evaluate"): {400, 404, 413, 422, 429, 500, 503},
    ("post", "/optimize"): {400, 404, 413, 422, 429, 500, 503},
    ("post", "/agent"): {400, 404, 409, 413, 422, 500, 502, 503, 504},
    ("get", "/agent/runs/{run_id}/events"): {404, 422, 500},
    ("get", "/tools"): {500},
    ("post", "/tools/{name}"): {400, 404, 413, 422, 500, 502, 503, 504},
    ("get", "/v1/models"): {500, 502, 503, 504},
    ("get", "/healthz"): {500},
    ("get", "/readyz"): {500},
    ("get", "/jobs/{job_id}"): {404, 500, 503},
    ("get", "/jobs/{job_id}/events"): {404, 422, 500, 503},
    ("delete", "/jobs/{job_id}"): {404, 500, 503},
}


@pytest.fixture(scope="module")
def doc() -> dict:
    return create_app(make_settings("http://127.0.0.1:9")).openapi()


def resolve(doc: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_every_route_declares_a_typed_success_response(doc):
    for (method, path) in ERRORS:
        op = doc["paths"][path][method]
        content = op["responses"]["200"]["content"]
        if path.endswith("/events"):
            assert resolve(doc, content["text/event-stream"]["itemSchema"])["oneOf"]
            continue
        schema = content["application/json"]["schema"]
        for v in schema.get("anyOf") or [schema]:
            assert resolve(doc, v).get("properties"), (method, path, v)  # a real shape, not dict[str, Any]


def test_agent_declares_both_its_json_document_and_its_event_stream(doc):
    content = doc["paths"]["/agent"]["post"]["responses"]["200"]["content"]
    final = resolve(doc, content["application/json"]["schema"])
    assert {"answer", "stop_reason", "steps", "model_calls", "usage", "cost_usd", "latency_ms", "model",
            "run_id", "session_id", "message", "trace"} <= set(final["properties"])
    assert set(final["required"]) >= {"answer", "stop_reason", "steps", "usage", "cost_usd", "run_id", "trace"}
    assert "session_id" not in final["required"] and "message" not in final["required"]
    event = resolve(doc, content["text/event-stream"]["itemSchema"])  # one event, as FastAPI declares SSE
    events = {resolve(doc, e)["properties"]["event"]["const"] for e in event["oneOf"]}
    assert events == {"run", "delta", "reasoning", "tool_call", "tool_result", "final", "error"}


def test_batch_items_are_a_result_or_an_error(doc):
    schema = doc["paths"]["/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    batch = next(resolve(doc, v) for v in schema["anyOf"] if "results" in resolve(doc, v)["properties"])
    items = batch["properties"]["results"]["items"]["anyOf"]
    shapes = [set(resolve(doc, i)["required"]) for i in items]
    assert any({"index", "outputs", "usage", "cost_usd"} <= s for s in shapes)
    assert any(s == {"index", "error"} for s in shapes)


def test_openai_routes_declare_the_error_shape_openai_clients_parse(doc):
    body = resolve(doc, doc["components"]["schemas"]["OpenAIErrorResponse"]["properties"]["error"])
    assert set(body["required"]) == {"message", "type"} and {"param", "code"} <= set(body["properties"])
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"):
        responses = doc["paths"][path]["post"]["responses"]
        assert {"400", "404", "429", "502", "503", "504"} <= set(responses)
        assert "Retry-After" in responses["429"]["headers"]
        assert {"application/json", "text/event-stream"} <= set(responses["200"]["content"])


def test_errors_are_declared_in_the_real_shape(doc):
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert "ValidationError" not in doc["components"]["schemas"]
    error = doc["components"]["schemas"]["ErrorResponse"]
    assert error["required"] == ["error"]
    body = resolve(doc, error["properties"]["error"])
    assert set(body["required"]) == {"type", "message", "request_id"}
    assert {"retryable", "retry_after_s", "errors"} <= set(body["properties"])
    assert body.get("additionalProperties") is True  # details such as raw, limit, available
    for (method, path), statuses in ERRORS.items():
        responses = doc["paths"][path][method]["responses"]
        declared = {int(s) for s in responses if s[0] in "45"}
        assert statuses <= declared, (method, path, sorted(declared))
        for status in declared:
            schema = responses[str(status)]["content"]["application/json"]["schema"]
            expected = ("ReadyResponse" if path == "/readyz" and status == 503
                        else "OpenAIErrorResponse" if path.startswith("/v1/") else "ErrorResponse")
            assert schema == {"$ref": f"#/components/schemas/{expected}"}, (method, path, status)


def test_readyz_declares_its_unready_answer(doc):
    responses = doc["paths"]["/readyz"]["get"]["responses"]
    assert responses["503"]["content"]["application/json"]["schema"]["$ref"].endswith("/ReadyResponse")
    assert "Retry-After" in responses["503"]["headers"]


def test_request_constraints_stay_in_the_document(doc):
    schemas = doc["components"]["schemas"]
    agent = schemas["AgentRequest"]["properties"]
    assert agent["max_steps"]["anyOf"][0]["minimum"] == 1
    assert agent["session_id"]["anyOf"][0]["pattern"]
    config = schemas["PredictConfig"]["properties"]
    assert config["temperature"]["anyOf"][0]["maximum"] == 2
    assert config["stop"]["anyOf"][0]["maxItems"] == 16


# --- /docs without internet ------------------------------------------------------------------


async def test_docs_reference_no_external_host_and_their_assets_are_served():
    async with gateway("http://127.0.0.1:9") as gw:
        page = await gw.client.get("/docs")
        assert page.status_code == 200 and "swagger" in page.text.lower()
        assert not re.search(r"(src|href)=[\"']?(https?:)?//", page.text), "an asset loads from another host"
        assert not re.search(r"https?://(?!127\.0\.0\.1|localhost)", page.text)
        assets = re.findall(r"(?:src|href)=[\"']([^\"']+)[\"']", page.text)
        urls = re.findall(r"url:\s*[\"']([^\"']+)[\"']", page.text)
        assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
        for url in [*assets, *urls]:
            r = await gw.client.get(url)
            assert r.status_code == 200, url
            assert r.content, url
        redoc = await gw.client.get("/redoc")
    assert redoc.status_code == 404  # FastAPI's CDN page is off; /docs is the one that works offline


def test_the_headers_every_answer_carries_are_declared(doc):
    """X-Request-Id and X-Vgate-Overhead-Ms are on every answer (the middleware adds them), and an
    agent run's id is in X-Vgate-Run-Id: a client generated from the document should see them."""
    for (method, path) in ERRORS:
        for status, response in doc["paths"][path][method]["responses"].items():
            headers = response.get("headers", {})
            assert {"X-Request-Id", "X-Vgate-Overhead-Ms"} <= set(headers), (method, path, status)
    assert "X-Vgate-Run-Id" in doc["paths"]["/agent"]["post"]["responses"]["200"]["headers"]
    assert "X-Vgate-Run-Id" in doc["paths"]["/agent/runs/{run_id}/events"]["get"]["responses"]["200"]["headers"]
