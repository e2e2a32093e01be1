from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from app.metrics import Metrics
from app.tools.builtin import MAX_SNIPPET_CHARS, register_builtins, searx_search
from app.tools.executor import ToolExecutor
from app.tools.registry import ToolError, ToolRegistry
from tests.tools.conftest import LocalServer, make_settings, tool_calls


def mock_client(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def test_parses_searxng_results() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"results": [
            {"title": "A", "url": "https://a.example", "content": "first"},
            {"title": "no url"},  # skipped: nothing to cite
            {"title": None, "url": "https://b.example", "content": "x" * 2000},
            {"title": "C", "url": "https://c.example"},
            {"title": "D", "url": "https://d.example", "content": "over the limit"},
        ]})

    async with mock_client(handler) as client:
        out = await searx_search(client, "http://searx.local:8888/", "vLLM paged attention", 3)

    assert str(seen[0].url) == "http://searx.local:8888/search?q=vLLM+paged+attention&format=json"
    assert out["query"] == "vLLM paged attention"
    assert [r["url"] for r in out["results"]] == ["https://a.example", "https://b.example", "https://c.example"]
    assert out["results"][0] == {"title": "A", "url": "https://a.example", "snippet": "first"}
    assert out["results"][1]["title"] == "" and len(out["results"][1]["snippet"]) == MAX_SNIPPET_CHARS + 1
    assert out["results"][2]["snippet"] == ""


@pytest.mark.parametrize(
    ("response", "type_", "message"),
    [
        (httpx.Response(403, text="Forbidden"), "tool_upstream_error", "refused the JSON format"),
        (httpx.Response(502, text="bad gateway"), "tool_upstream_error", "answered HTTP 502"),
        (httpx.Response(200, text="<html>"), "tool_upstream_error", "other than SearxNG JSON"),
        (httpx.Response(200, json=["not", "an", "object"]), "tool_upstream_error", "other than SearxNG JSON"),
        (httpx.Response(200, json={"results": "nope"}), "tool_upstream_error", "other than SearxNG JSON"),
    ],
)
async def test_backend_failures_are_clear_errors(response: httpx.Response, type_: str, message: str) -> None:
    async with mock_client(lambda request: response) as client:
        with pytest.raises(ToolError) as info:
            await searx_search(client, "http://searx.local", "q", 5)
    assert info.value.type == type_ and message in info.value.message


@pytest.mark.parametrize(
    ("exc", "type_"),
    [(httpx.ConnectError("refused"), "tool_upstream_error"), (httpx.ReadTimeout("slow"), "tool_timeout")],
)
async def test_transport_failures_are_clear_errors(exc: Exception, type_: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    async with mock_client(handler) as client:
        with pytest.raises(ToolError) as info:
            await searx_search(client, "http://searx.local", "q", 5)
    assert info.value.type == type_


async def test_without_a_backend_it_is_listed_unavailable(metrics: Metrics, http_client: httpx.AsyncClient) -> None:
    registry = ToolRegistry()
    register_builtins(registry, web_search_url=None, http_client=http_client)
    tool = registry.get("web_search")
    assert tool is not None and not tool.available and "VGATE_WEB_SEARCH_URL" in (tool.unavailable_reason or "")
    assert "web_search" not in [t["function"]["name"] for t in registry.openai_tools()]

    result = await ToolExecutor(registry, make_settings(), metrics).execute("web_search", {"query": "x"})
    assert result.error is not None and result.error["type"] == "tool_unavailable"
    assert tool_calls(metrics, "web_search", "unavailable") == 1


async def test_against_a_local_searxng(metrics: Metrics, http_client: httpx.AsyncClient,
                                       local_server: LocalServer) -> None:
    registry = ToolRegistry()
    register_builtins(registry, web_search_url=local_server.url, http_client=http_client)
    tools = ToolExecutor(registry, make_settings(), metrics)

    result = await tools.execute("web_search", json.dumps({"query": "rust async", "max_results": 2}), call_id="c1")
    assert result.ok, result.error
    assert result.result == {"query": "rust async", "results": [
        {"title": "rust async result 0", "url": "https://example.org/0", "snippet": "about rust async #0"},
        {"title": "rust async result 1", "url": "https://example.org/1", "snippet": "about rust async #1"},
    ]}
    assert local_server.requests == [{"path": "/search", "query": {"q": "rust async", "format": "json"}}]
    assert len((await tools.execute("web_search", {"query": "x"})).result["results"]) == 5  # the default

    failed = await tools.execute("web_search", {"query": "boom"})
    assert failed.error == {"type": "tool_upstream_error", "message": "the search backend answered HTTP 500",
                            "upstream_status": 500}
    invalid = await tools.execute("web_search", {"query": "x", "max_results": 100})
    assert invalid.error is not None and invalid.error["type"] == "invalid_arguments"
    assert tool_calls(metrics, "web_search", "ok") == 2
    assert tool_calls(metrics, "web_search", "error") == 1


async def test_a_lone_surrogate_in_the_backends_answer_is_replaced(metrics: Metrics) -> None:
    """SearxNG's JSON may spell "\\ud800" (a page's broken text): the result must stay valid text."""
    body = b'{"results": [{"title": "T\\ud800", "url": "https://a.example", "content": "s\\udfff"}]}'
    registry = ToolRegistry()
    async with mock_client(lambda request: httpx.Response(
            200, content=body, headers={"content-type": "application/json"})) as client:
        register_builtins(registry, web_search_url="http://searx.local", http_client=client)
        result = await ToolExecutor(registry, make_settings(), metrics).execute("web_search", {"query": "q"})
    assert result.ok, result.error
    assert result.result["results"] == [{"title": "T\ufffd", "url": "https://a.example", "snippet": "s\ufffd"}]
    result.content().encode("utf-8")
