from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.errors import VGateError
from app.metrics import Metrics
from app.routers import tools as tools_router
from app.tools import Tool, build_tool_executor
from app.tools.executor import ToolExecutor
from tests.tools.conftest import LocalServer, make_settings, tool_calls


def extra_tools(executor: ToolExecutor) -> None:
    """A few test tools beside the builtins, for the failure paths."""

    @executor.registry.tool(timeout_s=0.05)
    async def hang() -> None:
        """Never returns."""
        await asyncio.sleep(60)

    @executor.registry.tool()
    def crash(secret: str) -> None:
        """Has a bug."""
        raise RuntimeError(f"db password is {secret}")


def small_app(executor: ToolExecutor) -> FastAPI:
    app = FastAPI()
    app.state.tools = executor

    @app.exception_handler(VGateError)
    async def vgate_error(request: Request, exc: VGateError) -> JSONResponse:
        return JSONResponse({"error": exc.body()}, status_code=exc.status_code, headers=exc.headers())

    app.include_router(tools_router.router)
    return app


@pytest.fixture
async def client(metrics: Metrics, http_client: httpx.AsyncClient,
                 local_server: LocalServer) -> AsyncIterator[httpx.AsyncClient]:
    executor = build_tool_executor(make_settings(web_search_url=None, http_tools=[
        {"name": "status", "description": "Always 503.", "url": f"{local_server.url}/status/503"},
    ]), metrics, http_client)
    extra_tools(executor)
    transport = httpx.ASGITransport(app=small_app(executor))
    async with httpx.AsyncClient(transport=transport, base_url="http://vgate") as c:
        yield c
    executor.close()


async def test_lists_tools_with_schema_and_availability(client: httpx.AsyncClient) -> None:
    response = await client.get("/tools")
    assert response.status_code == 200
    tools = {t["name"]: t for t in response.json()["tools"]}
    assert list(tools) == ["calculator", "current_time", "web_search", "status", "hang", "crash"]
    assert tools["calculator"]["available"] is True and tools["calculator"]["unavailable_reason"] is None
    assert tools["calculator"]["parameters"]["required"] == ["expression"]
    assert tools["calculator"]["description"].startswith("Evaluate an arithmetic expression")
    assert tools["web_search"]["available"] is False
    assert "VGATE_WEB_SEARCH_URL" in tools["web_search"]["unavailable_reason"]


async def test_call_returns_the_result(client: httpx.AsyncClient, metrics: Metrics) -> None:
    response = await client.post("/tools/calculator", json={"arguments": {"expression": "6 * 7"}})
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "calculator"
    assert body["result"] == {"expression": "6 * 7", "result": 42}
    assert body["latency_ms"] >= 0
    assert tool_calls(metrics, "calculator", "ok") == 1


@pytest.mark.parametrize("body", [None, {}, {"arguments": {}}])
async def test_arguments_default_to_empty(client: httpx.AsyncClient, body: Any) -> None:
    response = await client.post("/tools/current_time", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["result"]["timezone"] == "UTC"


@pytest.mark.parametrize(
    ("path", "body", "status", "type_", "message"),
    [
        ("/tools/nope", {}, 404, "unknown_tool", "unknown tool 'nope'"),
        ("/tools/calculator", {"arguments": {}}, 422, "invalid_request", "'expression': Field required"),
        ("/tools/calculator", {"arguments": {"expression": "1/0"}}, 422, "tool_error", "division by zero"),
        ("/tools/calculator", {"arguments": {"expression": "9**9**9**9"}}, 422, "tool_error", "result too large"),
        ("/tools/current_time", {"arguments": {"timezone": "Nowhere/Land"}}, 422, "tool_error", "unknown time zone"),
        ("/tools/web_search", {"arguments": {"query": "x"}}, 503, "tool_unavailable", "no search backend"),
        ("/tools/hang", {}, 504, "tool_timeout", "did not finish within 0.05 s"),
        ("/tools/status", {}, 502, "tool_upstream_error", "the service answered HTTP 503"),
        ("/tools/crash", {"arguments": {"secret": "hunter2"}}, 502, "tool_failed",
         "tool 'crash' failed unexpectedly (RuntimeError)"),
    ],
)
async def test_failures_map_to_statuses(client: httpx.AsyncClient, path: str, body: dict[str, Any],
                                        status: int, type_: str, message: str) -> None:
    response = await client.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == type_ and message in error["message"]
    assert "hunter2" not in response.text and "Traceback" not in response.text


async def test_invalid_arguments_carry_the_schema_errors(client: httpx.AsyncClient) -> None:
    response = await client.post("/tools/calculator", json={"arguments": {"expression": 5, "extra": 1}})
    assert response.status_code == 422
    errors = response.json()["error"]["errors"]
    assert {(tuple(e["loc"]), e["type"]) for e in errors} == {(("expression",), "string_type"),
                                                             (("extra",), "extra_forbidden")}


@pytest.mark.parametrize(("exc", "status", "type_"), [
    (RecursionError("maximum recursion depth exceeded"), 422, "invalid_request"),
    (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), 422, "invalid_request"),
    (RuntimeError("db password is hunter2"), 502, "tool_failed"),
])
async def test_a_validator_that_raises_is_not_a_500(metrics: Metrics, exc: Exception, status: int,
                                                     type_: str) -> None:
    def validate(arguments: dict[str, Any]) -> dict[str, Any]:
        raise exc

    executor = build_tool_executor(make_settings(), metrics, httpx.AsyncClient())
    executor.registry.add(Tool(name="v", description="V.", parameters={"type": "object"}, func=lambda: None,
                               is_async=False, validate=validate))
    transport = httpx.ASGITransport(app=small_app(executor))
    async with httpx.AsyncClient(transport=transport, base_url="http://vgate") as c:
        response = await c.post("/tools/v", json={"arguments": {"x": 1}})
    assert response.status_code == status, response.text
    assert response.json()["error"]["type"] == type_
    assert "hunter2" not in response.text


async def test_upstream_status_is_in_the_error_body(client: httpx.AsyncClient) -> None:
    error = (await client.post("/tools/status")).json()["error"]
    assert error["upstream_status"] == 503


async def test_through_the_real_app(local_server: LocalServer) -> None:
    """``create_app`` wires the executor in its lifespan and includes this router."""
    from app.main import create_app

    settings = make_settings(upstream_url="http://127.0.0.1:9", web_search_url=local_server.url,
                             log_format="console", log_level="WARNING")
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://vgate") as c:
            listed = (await c.get("/tools")).json()["tools"]
            assert {t["name"]: t["available"] for t in listed} == {
                "calculator": True, "current_time": True, "web_search": True}
            ok = await c.post("/tools/web_search", json={"arguments": {"query": "vgate", "max_results": 1}})
            assert ok.status_code == 200, ok.text
            assert ok.json()["result"]["results"][0]["url"] == "https://example.org/0"
            missing = await c.post("/tools/nope", json={})
            assert missing.status_code == 404
            assert missing.json()["error"]["type"] == "unknown_tool"
            assert "request_id" in missing.json()["error"]
            assert app.state.metrics.registry.get_sample_value(
                "vgate_tool_calls_total", {"tool": "web_search", "status": "ok"}) == 1


def test_dependency_aliases_live_in_deps() -> None:
    """Every ``Annotated[..., Depends(...)]`` alias is defined in app/routers/deps.py, which the
    routers import: one place says what each dependency is and where the lifespan puts it."""
    import ast
    from pathlib import Path

    from app.routers import agent, deps

    defined: dict[str, list[str]] = {}
    for path in sorted(Path(deps.__file__).parent.glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
            if isinstance(value, ast.Subscript) and "Depends(" in ast.unparse(value):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                defined.setdefault(path.name, []).extend(ast.unparse(t) for t in targets)
    assert set(defined) == {"deps.py"}, defined
    assert {"AgentDep", "ExecutorDep"} <= set(defined["deps.py"])
    assert agent.AgentDep is deps.AgentDep and tools_router.ExecutorDep is deps.ExecutorDep  # type: ignore[attr-defined]
