"""Property-based fuzzing of the whole API from its own OpenAPI document (schemathesis), in-process
over ASGI, against the simulator, with every tool available (web search and a configured HTTP
tool answered by a local stand-in).

What it holds the gateway to, for any request the document allows and many it does not:
no 5xx; every status, content type, header and body is the one the document declares.
Bounded: a few examples per operation, derandomized, so a run is repeatable and takes seconds.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.python import asgi

from app.main import create_app
from tests.support import make_settings

# per test: the whole module takes about 15 s on 2 cores; VGATE_FUZZ_EXAMPLES=300 for a longer hunt
MAX_EXAMPLES = int(os.environ.get("VGATE_FUZZ_EXAMPLES", "25"))
_text = st.text(max_size=40)
# each tool's arguments, mostly of the right shape, so that the tools themselves run
TOOL_ARGUMENTS = {
    "calculator": st.fixed_dictionaries({"expression": st.one_of(
        _text, st.sampled_from(["6*7", "2**10", "1/0", "9**9**9**9", "sqrt(2)", "(1+", "abs(-3) % 0"]))}),
    "current_time": st.one_of(st.just({}), st.fixed_dictionaries({"timezone": st.one_of(
        _text, st.sampled_from(["UTC", "Europe/Paris", "Nowhere/Land", "../etc"]))})),
    "web_search": st.fixed_dictionaries({"query": _text}, optional={"max_results": st.integers(-3, 50)}),
    "lookup": st.fixed_dictionaries({"word": st.text(max_size=80)}),
}

# 502s that are the model's output, not a failure: a reply cut off by the request's own max_tokens,
# or one that does not match the signature. Both are documented answers of /predict.
MODEL_OUTPUT_ERRORS = {"output_truncated", "output_validation_error"}


@schemathesis.check
def no_server_error(ctx, response, case) -> None:
    """No 5xx, except /predict's documented 502s for the model's own output (the simulator is not
    configured to fail, so no upstream error is expected)."""
    if response.status_code < 500:
        return
    try:
        error = json.loads(response.content)["error"]
    except (ValueError, KeyError, TypeError):
        error = {}
    if response.status_code == 502 and error.get("type") in MODEL_OUTPUT_ERRORS:
        return
    raise AssertionError(f"{response.status_code} {error or response.content[:300]!r}")


CHECKS = [no_server_error, *(getattr(schemathesis.checks, name) for name in (
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",  # a request the document forbids is a 4xx
))]


class _ToolBackends(BaseHTTPRequestHandler):
    """SearxNG's JSON API (web_search) and an echo endpoint (the configured HTTP tool)."""

    def do_GET(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/search":
            body = {"query": query.get("q", ""), "results": [
                {"title": f"result {i}", "url": f"https://example.org/{i}", "content": "text"} for i in range(3)]}
        else:
            body = {"path": url.path, "query": query}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def tool_backends() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ToolBackends)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def api_schema(sim_url, tool_backends):
    app = create_app(make_settings(
        sim_url,
        web_search_url=tool_backends,
        http_tools=[{
            "name": "lookup", "description": "Look a word up.", "url": f"{tool_backends}/lookup?word={{word}}",
            "parameters": {"type": "object", "properties": {"word": {"type": "string", "maxLength": 64}},
                           "required": ["word"]},
        }],
        agent_max_steps=2,  # a generated run stays short
        sse_heartbeat_s=5,
    ))
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    asgi.shutdown_lifespans()  # schemathesis's pytest plugin also ends them after each test


def _finished_run(app) -> str:
    """A run whose events a resume can read (in this test's lifespan)."""
    with asgi.get_client(app) as client:
        r = client.post("/agent", json={"input": 'CALL calculator {"expression": "2+2"}'},
                        headers={"accept": "application/json"})
    assert r.status_code == 200, r.text
    return r.json()["run_id"]


def _with_arguments(case_and_arguments):
    case, arguments = case_and_arguments
    case.body = {"arguments": arguments}
    return case


def _steer(case):
    """The same case made to pass the rules the document cannot state (exactly one of signature or
    program, of inputs or batch; of input or messages), so that generated requests also reach the
    model and the tools instead of all ending in a 422."""
    body = dict(case.body) if isinstance(case.body, dict) else {}
    if case.operation.path == "/predict":
        body.update(program=None, signature="question -> answer", demos=None, model=None)
        batch = body.get("batch")
        if batch:
            body.update(inputs=None, batch=[{"question": json.dumps(x)} for x in batch[:4]])
        else:
            body.update(batch=None, inputs={"question": json.dumps(body.get("inputs"))})
    else:  # /agent
        if (body.get("input") is None) == (body.get("messages") is None):
            body.update(input=json.dumps(body.get("messages")), messages=None)
        body.update(model=None, max_steps=None)
    case.body = body
    return case


def test_every_tool_is_available(api_schema):
    with asgi.get_client(api_schema.app) as client:
        tools = {t["name"]: t["available"] for t in client.get("/tools").json()["tools"]}
    assert tools == dict.fromkeys(TOOL_ARGUMENTS, True)


def _cases() -> list[tuple[str, str, GenerationMode]]:
    """Every operation with valid requests; those with a body with invalid ones too (the others
    take no input a request could get wrong)."""
    doc = create_app(make_settings("http://127.0.0.1:9")).openapi()  # the document only: no lifespan
    cases = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            cases.append((method.upper(), path, GenerationMode.POSITIVE))
            if "requestBody" in op:
                cases.append((method.upper(), path, GenerationMode.NEGATIVE))
    return cases


# Schemathesis's own pytest integration (from_fixture) fails on pytest 9 (it reads Function._nodeid),
# so each operation is a test of its own that draws cases from schemathesis's strategy.
@pytest.mark.parametrize(("method", "path", "mode"), _cases(), ids=str)
def test_api_keeps_its_document(api_schema, method, path, mode):
    operation = api_schema[path][method]
    cases = operation.as_strategy(generation_mode=mode)
    if mode == GenerationMode.POSITIVE:
        if path == "/tools/{name}":
            cases = st.one_of(cases, *(
                st.tuples(operation.as_strategy(path_parameters={"name": name}), arguments).map(_with_arguments)
                for name, arguments in TOOL_ARGUMENTS.items()))
        elif path == "/agent/runs/{run_id}/events":
            run_id = _finished_run(api_schema.app)
            cases = st.one_of(cases, operation.as_strategy(path_parameters={"run_id": run_id}))
        elif path in ("/predict", "/agent"):
            cases = st.one_of(cases, cases.map(_steer))

    # /agent answers JSON instead of an event stream when asked: both are fuzzed
    accepts = st.sampled_from(["text/event-stream", "application/json"]) if path == "/agent" else st.none()

    @given(case=cases, accept=accepts)
    @settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])  # no shrinking
    def check(case, accept) -> None:
        case.call_and_validate(checks=CHECKS, headers={"accept": accept} if accept else None)

    check()
