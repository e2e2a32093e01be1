from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from app.metrics import Metrics
from app.settings import HttpToolConfig
from app.tools import build_tool_executor
from app.tools.executor import ToolExecutor
from app.tools.http_tools import MAX_ERROR_SNIPPET_CHARS, MAX_RESPONSE_BYTES
from tests.tools.conftest import LocalServer, make_settings, tool_calls
from tests.tools.test_router import small_app

CITY_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "tags": {"type": "array", "items": {"type": "string"}},
        "exact": {"type": "boolean"},
    },
    "required": ["city"],
}


def with_property(name: str) -> dict[str, Any]:
    return {**CITY_SCHEMA, "properties": {**CITY_SCHEMA["properties"], name: {"type": "string"}}}


def config(url: str, **kw: Any) -> dict[str, Any]:
    return {"name": "weather", "description": "Weather for a city.", "parameters": CITY_SCHEMA, "url": url, **kw}


def build(metrics: Metrics, client: httpx.AsyncClient, *tools: dict[str, Any], **settings: Any) -> ToolExecutor:
    return build_tool_executor(make_settings(http_tools=list(tools), **settings), metrics, client)


def capturing_client(sent: list[httpx.Request], response: httpx.Response | None = None,
                     **kw: Any) -> httpx.AsyncClient:
    """A client whose transport records every request it is given and answers ``response`` (200 JSON)."""

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return response if response is not None else httpx.Response(200, json={"ok": True})

    return httpx.AsyncClient(transport=httpx.MockTransport(handler), **kw)


async def post_tool(tools: ToolExecutor, name: str, arguments: dict[str, Any]) -> httpx.Response:
    """``POST /tools/{name}`` through the real router."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=small_app(tools)), base_url="http://vgate") as c:
        # json.dumps escapes what UTF-8 cannot carry ("\\ud800"), as a client's JSON library may
        return await c.post(f"/tools/{name}", content=json.dumps({"arguments": arguments}),
                            headers={"content-type": "application/json"})


async def test_get_fills_placeholders_and_sends_the_rest_as_query(
    metrics: Metrics, http_client: httpx.AsyncClient, local_server: LocalServer
) -> None:
    tools = build(metrics, http_client, config(
        f"{local_server.url}/echo/weather/{{city}}?units=metric", headers={"X-Api-Key": "k1"}))

    result = await tools.execute("weather", {"city": "São Paulo?x&y=1 %", "days": 3, "tags": ["a", "b"],
                                             "exact": True})
    assert result.ok, result.error
    echo = result.result
    assert echo["method"] == "GET" and echo["body"] is None
    assert echo["raw_path"].startswith("/echo/weather/S%C3%A3o%20Paulo%3Fx%26y%3D1%20%25?")  # one path segment
    assert echo["path"] == "/echo/weather/São Paulo?x&y=1 %"
    assert echo["query"] == {"units": ["metric"], "days": ["3"], "tags": ["a", "b"], "exact": ["true"]}
    assert echo["headers"]["x-api-key"] == "k1"
    assert tool_calls(metrics, "weather", "ok") == 1


async def test_post_sends_the_rest_as_a_json_body(
    metrics: Metrics, http_client: httpx.AsyncClient, local_server: LocalServer
) -> None:
    tools = build(metrics, http_client, config(f"{local_server.url}/echo/cities/{{city}}", method="POST"))
    result = await tools.execute("weather", '{"city": "Lyon", "days": 2, "tags": ["x"]}')
    assert result.ok, result.error
    assert result.result["method"] == "POST"
    assert result.result["path"] == "/echo/cities/Lyon"
    assert result.result["body"] == {"days": 2, "tags": ["x"]}
    assert result.result["query"] == {}


async def test_arguments_are_checked_against_the_json_schema(
    metrics: Metrics, http_client: httpx.AsyncClient, local_server: LocalServer
) -> None:
    tools = build(metrics, http_client, config(f"{local_server.url}/echo/{{city}}"))
    result = await tools.execute("weather", {"city": "", "days": 9})
    assert result.error is not None and result.error["type"] == "invalid_arguments"
    assert {tuple(e["loc"]) for e in result.error["errors"]} == {("city",), ("days",)}
    assert (await tools.execute("weather", {"days": 1})).error["errors"][0]["type"] == "required"  # type: ignore[index]
    assert local_server.requests == []
    assert tool_calls(metrics, "weather", "invalid_arguments") == 2


async def test_text_responses_are_returned_and_capped(
    metrics: Metrics, http_client: httpx.AsyncClient, local_server: LocalServer
) -> None:
    no_params = {"type": "object", "properties": {"size": {"type": "integer"}}}
    tools = build(metrics, http_client, {"name": "text", "description": "Text.", "parameters": no_params,
                                         "url": f"{local_server.url}/text"})
    assert (await tools.execute("text", {"size": 5})).result == "xxxxx"
    big = (await tools.execute("text", {"size": 10 * MAX_RESPONSE_BYTES})).result
    assert big.startswith("x" * MAX_RESPONSE_BYTES + "\n[truncated")
    assert len(big) < MAX_RESPONSE_BYTES + 100


SAY_SCHEMA = {"type": "object", "properties": {"say": {"type": "string"}}}


@pytest.mark.parametrize("code", [400, 404, 422, 429])
async def test_non_2xx_is_an_error_with_the_status(
    code: int, metrics: Metrics, http_client: httpx.AsyncClient, local_server: LocalServer
) -> None:
    tools = build(metrics, http_client, {"name": "status", "description": "S.", "parameters": SAY_SCHEMA,
                                         "url": f"{local_server.url}/status/{code}"})
    result = await tools.execute("status", {"say": "city not found"})
    # a 4xx body says what the caller got wrong: the model needs it to correct its call
    assert result.error == {"type": "tool_upstream_error", "upstream_status": code,
                            "message": f"status: the service answered HTTP {code}: city not found"}
    assert tool_calls(metrics, "status", "error") == 1


@pytest.mark.parametrize("code", [500, 502, 503])
async def test_a_5xx_body_is_logged_not_shown(
    code: int, metrics: Metrics, http_client: httpx.AsyncClient, local_server: LocalServer
) -> None:
    tools = build(metrics, http_client, {"name": "status", "description": "S.", "parameters": SAY_SCHEMA,
                                         "url": f"{local_server.url}/status/{code}"})
    leak = "connect to db-7.corp.internal:5432 failed " + "x" * 5000
    with capture_logs() as logs:
        result = await tools.execute("status", {"say": leak})
        response = await post_tool(tools, "status", {"say": leak})
    # a 5xx body may name internal hosts: not for the model, the SSE stream or the caller
    assert result.error == {"type": "tool_upstream_error", "upstream_status": code,
                            "message": f"status: the service answered HTTP {code}"}
    assert "db-7" not in result.content()
    assert response.status_code == 502, response.text
    assert response.json()["error"] == {"type": "tool_upstream_error", "upstream_status": code,
                                        "message": f"status: the service answered HTTP {code}"}
    # the operator sees it, truncated
    lines = [e for e in logs if e["event"] == "tool_upstream_error_body"]
    assert len(lines) == 2 and all(e["log_level"] == "warning" for e in lines)
    assert lines[0]["tool"] == "status" and lines[0]["upstream_status"] == code
    assert lines[0]["body"].startswith("connect to db-7.corp.internal:5432 failed xxx")
    assert len(lines[0]["body"]) <= MAX_ERROR_SNIPPET_CHARS


async def test_slow_service_times_out(
    metrics: Metrics, http_client: httpx.AsyncClient, local_server: LocalServer
) -> None:
    tools = build(metrics, http_client, {"name": "slow", "description": "Slow.", "timeout_s": 0.1,
                                         "url": f"{local_server.url}/slow?s=5"})
    result = await tools.execute("slow", {})
    assert result.error is not None and result.error["type"] == "tool_timeout"
    assert tool_calls(metrics, "slow", "timeout") == 1


async def test_unreachable_service(metrics: Metrics, http_client: httpx.AsyncClient) -> None:
    tools = build(metrics, http_client, {"name": "down", "description": "Down.", "url": "http://127.0.0.1:1/x"})
    result = await tools.execute("down", {})
    assert result.error is not None and result.error["type"] == "tool_upstream_error"
    assert "could not reach the service" in result.error["message"]


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (httpx.Response(200, json={"a": 1}), {"a": 1}),
        (httpx.Response(200, content=b'{"a": 1}', headers={"content-type": "application/problem+json"}), {"a": 1}),
        (httpx.Response(200, content=b"not json", headers={"content-type": "application/json"}), "not json"),
        (httpx.Response(200, content=b'{"a": 1}', headers={"content-type": "text/plain"}), '{"a": 1}'),
        (httpx.Response(200, content="é".encode("latin-1"), headers={"content-type": "text/plain; charset=latin-1"}),
         "é"),
        (httpx.Response(204), "(empty response, HTTP 204)"),
        # what JSON text can spell but no UTF-8 stream or strict document carries
        (httpx.Response(200, content=b'{"v": "x\\ud800y", "k\\udc00": 1}',
                        headers={"content-type": "application/json"}), {"v": "x\ufffdy", "k\ufffd": 1}),
        (httpx.Response(200, content=b'{"v": [NaN, -Infinity]}', headers={"content-type": "application/json"}),
         {"v": [None, None]}),
    ],
)
async def test_response_decoding(metrics: Metrics, response: httpx.Response, expected: Any) -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda request: response)) as client:
        tools = build(metrics, client, {"name": "t", "description": "T.", "url": "https://api.example/x"})
        assert (await tools.execute("t", {})).result == expected


async def test_builtins_and_configured_tools_share_one_registry(metrics: Metrics,
                                                                http_client: httpx.AsyncClient) -> None:
    tools = build(metrics, http_client, config("https://api.example/{city}"), web_search_url="http://searx:8888")
    assert tools.registry.names() == ["calculator", "current_time", "web_search", "weather"]
    assert all(t.available for t in tools.registry)
    weather = tools.registry.get("weather")
    assert weather is not None and weather.parameters == {**CITY_SCHEMA, "additionalProperties": False}
    assert weather.timeout_s is None


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        ([config("https://x/{city}", name="calculator")], "already taken"),
        ([config("https://x/{city}"), config("https://x/{city}")], "already taken"),
        ([config("https://x/{days}")], "must be listed in parameters.required"),
        ([config("https://x/{nope}")], "must be listed in parameters.required"),
        # required but not declared: additionalProperties is false, so no call could ever pass it
        ([config("https://x/{nope}", parameters={**CITY_SCHEMA, "required": ["city", "nope"]})],
         r"http tool 'weather': url placeholder\(s\) \['nope'\] must be declared in parameters.properties"),
        ([config("https://x/w?q={q}&c={city}", parameters={"type": "object", "required": ["q", "city"]})],
         r"http tool 'weather': url placeholder\(s\) \['city', 'q'\] must be declared in parameters.properties"),
        ([config("/relative/{city}")], "url must be absolute"),
        ([config("https://x", parameters={"type": "object", "properties": {"a": {"type": "strung"}}})],
         "invalid parameters schema"),
        ([config("https://x", parameters={"type": "array"})], "of type 'object'"),
        ([config("https://x", parameters={"type": "object", "patternProperties": {"^a": {}}})],
         "patternProperties is not supported"),
        ([config("https://x/{city}?units=metric&appid=SECRET", parameters=with_property("appid"))],
         r"http tool 'weather': argument\(s\) \['appid'\] .* fixed query"),
        ([config("https://x/{city}?units=metric&app%69d=SECRET", parameters=with_property("AppID"),
                 method="POST")], r"\['AppID'\] .* fixed query"),
        ([config("https://x/{city}?a=1#top")], "must not have a fragment"),
        ([config("https:///{city}")], "url must name a host"),
        ([config("https://api.example:x/{city}")], r"http tool 'weather': invalid url: Invalid port"),
        ([config("https://api.example/{city}", allowed_hosts=["other.example", "example"])],
         r"http tool 'weather': the url's host 'api.example' is not in allowed_hosts"),
        ([config("https://api.example/{city}", allowed_hosts=[])], "is not in allowed_hosts"),
        *[([config(url)], r"http tool 'weather': placeholders may not stand in the url's scheme, host, port")
          for url in ["https://{city}/x", "https://api.{city}.example/x", "https://api.example:{city}/x",
                      "https://{city}@api.example/x", "https://u:{city}@api.example/x", "https://api.example{city}",
                      "https://api.example{city}?q=1"]],
        ([config("https://x/a?{city}=1")], "placeholders in the query may only stand in values"),
        ([config("https://x/a?k=1&x{city}=2")], "placeholders in the query may only stand in values"),
    ],
)
def test_configuration_mistakes_fail_at_startup(tools: list[dict[str, Any]], message: str, metrics: Metrics) -> None:
    with pytest.raises(ValueError, match=message):
        build_tool_executor(make_settings(http_tools=tools), metrics, httpx.AsyncClient())


def test_a_client_with_default_credentials_is_refused(metrics: Metrics) -> None:
    client = httpx.AsyncClient(headers={"Authorization": "Bearer upstream-key"})
    with pytest.raises(ValueError, match="default authorization"):
        build_tool_executor(make_settings(), metrics, client)


def test_config_model_validates_names() -> None:
    with pytest.raises(ValueError):
        HttpToolConfig(name="bad name", description="d", url="https://x")


# --- what a prompt-injected model must not be able to do --------------------------------------


@pytest.mark.parametrize("additional", ["absent", True, {"type": "string"}])
async def test_undeclared_arguments_are_refused_whatever_the_schema_says(additional: Any, metrics: Metrics) -> None:
    schema = dict(CITY_SCHEMA) if additional == "absent" else {**CITY_SCHEMA, "additionalProperties": additional}
    sent: list[httpx.Request] = []
    async with capturing_client(sent) as client:
        tools = build(metrics, client, config("https://api.example/w/{city}?units=metric", parameters=schema))
        response = await post_tool(tools, "weather", {"city": "Lyon", "appid": "ATTACKER", "units": "imperial"})
        assert response.status_code == 422, response.text
        assert [e["type"] for e in response.json()["error"]["errors"]] == ["additionalProperties"]
        assert "'appid', 'units' were unexpected" in response.json()["error"]["message"]
        assert sent == []
        assert tool_calls(metrics, "weather", "invalid_arguments") == 1
        # what the model and GET /tools are shown says so too
        weather = tools.registry.get("weather")
        assert weather is not None and weather.info()["parameters"]["additionalProperties"] is False
        assert tools.registry.openai_tools(["weather"])[0]["function"]["parameters"]["additionalProperties"] is False
        assert (await tools.execute("weather", {"city": "Lyon", "days": 2})).ok  # declared ones still pass
        assert [str(r.url) for r in sent] == ["https://api.example/w/Lyon?units=metric&days=2"]


async def test_the_fixed_query_is_sent_exactly_as_configured(
    metrics: Metrics, http_client: httpx.AsyncClient, local_server: LocalServer
) -> None:
    fixed = "appid=S%2BCR%20ET&sig=a+b%7e&units=metric"
    tools = build(metrics, http_client, config(f"{local_server.url}/echo/w/{{city}}?{fixed}"))
    result = await tools.execute("weather", {"city": "Lyon", "days": 3, "tags": ["x y", "&units=imperial"]})
    assert result.ok, result.error
    assert result.result["raw_path"] == f"/echo/w/Lyon?{fixed}&days=3&tags=x+y&tags=%26units%3Dimperial"
    assert result.result["query"]["units"] == ["metric"]


USER_SCHEMA = {"type": "object", "properties": {"user": {"type": "string"}}, "required": ["user"]}


@pytest.mark.parametrize("value", [
    ".", "..", "...", "", " .. ", "/", "a/b", "../admin", "\\", "..\\admin",  # as they are
    "%2e", "%2e%2e", "%2E.", ".%2e", "%2F", "a%2fb", "%5c", "..%5C",  # percent-encoded
    "%252e%252e", "%25252e%25252e", "%252F",  # encoded twice, three times
    "．．", "a／b",  # fullwidth, which NFKC turns into '..' and '/'
    "..;", "..;jsessionid=1", "..%00", "a\nb",  # Tomcat's path parameters, control characters
])
async def test_path_placeholders_refuse_dot_segments_and_slashes(value: str, metrics: Metrics) -> None:
    sent: list[httpx.Request] = []
    async with capturing_client(sent) as client:
        tools = build(metrics, client, {"name": "weather", "description": "W.", "parameters": USER_SCHEMA,
                                        "url": "https://api.example/v1/users/{user}/weather?appid=SECRET"})
        response = await post_tool(tools, "weather", {"user": value})
    assert response.status_code == 422, response.text
    assert [(e["loc"], e["type"]) for e in response.json()["error"]["errors"]] == [(["user"], "path_segment")]
    assert sent == []
    assert tool_calls(metrics, "weather", "invalid_arguments") == 1


@pytest.mark.parametrize("value", ["a..b", ".env", "v1.2", "%41", "100%", "x;y"])
async def test_path_placeholders_take_ordinary_names(
    value: str, metrics: Metrics, http_client: httpx.AsyncClient, local_server: LocalServer
) -> None:
    tools = build(metrics, http_client, {"name": "weather", "description": "W.", "parameters": USER_SCHEMA,
                                         "url": f"{local_server.url}/echo/users/{{user}}/weather"})
    result = await tools.execute("weather", {"user": value})
    assert result.ok, result.error
    assert result.result["path"] == f"/echo/users/{value}/weather"


async def test_query_placeholders_hold_any_text(
    metrics: Metrics, http_client: httpx.AsyncClient, local_server: LocalServer
) -> None:
    tools = build(metrics, http_client, config(f"{local_server.url}/echo/search?q={{city}}&units=metric"))
    value = "../../admin/%2e%2e/?x=1&units=imperial#\\"
    result = await tools.execute("weather", {"city": value})
    assert result.ok, result.error
    assert result.result["path"] == "/echo/search"
    assert result.result["query"] == {"q": [value], "units": ["metric"]}


async def test_allowed_hosts_let_the_templates_host_through(metrics: Metrics) -> None:
    assert HttpToolConfig(name="t", description="d", url="https://x/").allowed_hosts is None
    sent: list[httpx.Request] = []
    async with capturing_client(sent) as client:
        tools = build(metrics, client, config("https://api.example./w/{city}", allowed_hosts=["other", "API.Example"]))
        assert (await tools.execute("weather", {"city": "Lyon"})).ok
    assert [str(r.url) for r in sent] == ["https://api.example./w/Lyon"]


async def test_redirects_are_not_followed_even_by_a_client_that_would(metrics: Metrics) -> None:
    sent: list[httpx.Request] = []
    moved = httpx.Response(302, headers={"location": "https://evil.example/steal"}, text="moved")
    async with capturing_client(sent, moved, follow_redirects=True) as client:
        tools = build(metrics, client, config("https://api.example/w/{city}?appid=SECRET"))
        result = await tools.execute("weather", {"city": "Lyon"})
    assert result.error == {"type": "tool_upstream_error", "upstream_status": 302,
                            "message": "weather: the service answered HTTP 302: moved"}
    assert [str(r.url) for r in sent] == ["https://api.example/w/Lyon?appid=SECRET"]


# --- arguments no service could be sent -------------------------------------------------------


@pytest.mark.parametrize(("url", "method", "arguments", "loc"), [
    ("https://api.example/w/{city}", "GET", {"city": "a\ud800"}, ["city"]),  # a path placeholder
    ("https://api.example/w?q={city}", "GET", {"city": "\udfffb"}, ["city"]),  # a query placeholder
    ("https://api.example/w/{city}", "GET", {"city": "Lyon", "tags": ["ok", "\ud800"]}, ["tags", 1]),  # the query
    ("https://api.example/w/{city}", "POST", {"city": "Lyon", "tags": ["\ud800"]}, ["tags", 0]),  # the JSON body
])
async def test_lone_surrogates_are_invalid_arguments(
    url: str, method: str, arguments: dict[str, Any], loc: list[Any], metrics: Metrics
) -> None:
    sent: list[httpx.Request] = []
    async with capturing_client(sent) as client:
        tools = build(metrics, client, config(url, method=method))
        # POST /tools: a 422 like any invalid argument, not a 500 (or a 502 from inside the call)
        response = await post_tool(tools, "weather", arguments)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert [(e["loc"], e["type"]) for e in error["errors"]] == [(loc, "unicode")]
        assert "lone surrogate" in error["errors"][0]["msg"] and "lone surrogate" in error["message"]
        # the agent: a model's arguments are JSON text, where "\ud800" is a legal escape
        result = await tools.execute("weather", json.dumps(arguments), call_id="c1")
        assert result.error is not None and result.error["type"] == "invalid_arguments", result.error
        assert result.error["errors"] == error["errors"]
        result.content().encode("utf-8")  # what the model reads is valid text
    assert sent == []
    assert tool_calls(metrics, "weather", "invalid_arguments") == 2


async def test_a_lone_surrogate_in_a_nested_key_is_refused_with_a_printable_location(metrics: Metrics) -> None:
    schema = {"type": "object", "properties": {"filters": {"type": "object"}}}
    sent: list[httpx.Request] = []
    async with capturing_client(sent) as client:
        tools = build(metrics, client, {"name": "f", "description": "F.", "parameters": schema,
                                        "url": "https://api.example/f", "method": "POST"})
        response = await post_tool(tools, "f", {"filters": {"k\ud800": 1}})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["errors"][0]["loc"] == ["filters", "k\\ud800"]
    assert sent == []


async def test_a_service_answering_a_lone_surrogate_is_a_result_not_a_500(metrics: Metrics) -> None:
    answer = httpx.Response(200, content=b'{"city": "x\\ud800y"}', headers={"content-type": "application/json"})
    async with capturing_client([], answer) as client:
        tools = build(metrics, client, config("https://api.example/w"))
        response = await post_tool(tools, "weather", {"city": "a"})
    assert response.status_code == 200, response.text
    assert response.json()["result"] == {"city": "x\ufffdy"}


@pytest.mark.parametrize("text", ['{"city": "Lyon", "temp": NaN}', '{"city": "Lyon", "temp": -Infinity}'])
async def test_nan_and_infinity_in_arguments_are_invalid_arguments(text: str, metrics: Metrics) -> None:
    """Python's JSON reader takes NaN and Infinity, JSON does not: a model writing them must get an
    invalid_arguments result, not a service sent invalid JSON (or a tool_failed from the encoder)."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "temp": {"type": "number"}},
              "required": ["city"]}
    sent: list[httpx.Request] = []
    async with capturing_client(sent) as client:
        tools = build(metrics, client, {"name": "t", "description": "T.", "parameters": schema,
                                        "url": "https://api.example/t", "method": "POST"})
        result = await tools.execute("t", text, call_id="c1")
        response = await post_tool(tools, "t", json.loads(text))  # a client's JSON library may send them too
    assert result.error is not None and result.error["type"] == "invalid_arguments", result.error
    assert response.status_code == 422, response.text
    assert sent == []
