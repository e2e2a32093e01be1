"""API keys from configuration: who may call which route, model and tool; the gateway open without them."""

from __future__ import annotations

import hashlib

import pytest
from structlog.testing import capture_logs

from tests.support import gateway

KEY = "vg-" + "a" * 29
OTHER = "vg-" + "b" * 29
KEYS = [
    {"id": "app", "key": KEY, "scopes": ["predict", "openai"], "models": ["sim-model"]},
    {"id": "ops", "key_sha256": hashlib.sha256(OTHER.encode()).hexdigest(), "scopes": ["admin", "tools", "agent"],
     "tools": ["calculator"]},
]
PREDICT = {"signature": "q -> a", "inputs": {"q": "x"}}
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def test_without_keys_the_gateway_is_open_and_says_so(sim_url):
    import httpx

    from app.main import create_app
    from tests.support import make_settings

    app = create_app(make_settings(sim_url))
    with capture_logs() as logs:  # after create_app: it configures logging
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://vgate") as c:
                r = await c.post("/predict", json=PREDICT)
    assert r.status_code == 200
    assert [e["event"] for e in logs].count("access_control_off") == 1


async def test_a_missing_or_wrong_key_is_a_401_in_the_one_error_shape(sim_url):
    async with gateway(sim_url, api_keys=KEYS) as gw:
        missing = await gw.client.post("/predict", json=PREDICT)
        wrong = await gw.client.post("/predict", json=PREDICT, headers=bearer("vg-" + "c" * 29))
        v1 = await gw.client.post("/v1/chat/completions", json=CHAT)
        open_ = [await gw.client.get(p) for p in ("/healthz", "/readyz", "/openapi.json", "/docs")]
    for r in (missing, wrong, v1):
        assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
        assert r.headers["www-authenticate"].startswith("Bearer") and r.json()["error"]["request_id"]
    assert v1.json()["error"]["code"] == 401  # the OpenAI shape on /v1
    assert [r.status_code for r in open_] == [200, 200, 200, 200]


async def test_a_key_works_as_bearer_or_x_api_key_within_its_scopes_and_models(sim_url):
    async with gateway(sim_url, api_keys=KEYS) as gw:
        ok = await gw.client.post("/predict", json=PREDICT, headers=bearer(KEY))
        header = await gw.client.post("/v1/chat/completions", json=CHAT, headers={"x-api-key": KEY})
        no_scope = await gw.client.post("/agent", json={"input": "hi"}, headers=bearer(KEY))
        metrics = await gw.client.get("/metrics", headers=bearer(KEY))
        metrics_ops = await gw.client.get("/metrics", headers=bearer(OTHER))
        model = await gw.client.post("/predict", json={**PREDICT, "model": "other-model"}, headers=bearer(KEY))
    assert ok.status_code == 200 and header.status_code == 200
    assert no_scope.status_code == 403 and no_scope.json()["error"]["type"] == "scope_missing"
    assert metrics.status_code == 403 and metrics_ops.status_code == 200  # /metrics: the admin scope
    assert model.status_code == 404  # not served at all: the served ones are listed, whatever the key


async def test_a_model_outside_the_keys_list_is_a_403(sim_url):
    keys = [{"id": "narrow", "key": KEY, "models": ["another-model"]}]
    async with gateway(sim_url, api_keys=keys) as gw:
        r = await gw.client.post("/v1/chat/completions", json={**CHAT, "model": "sim-model"}, headers=bearer(KEY))
        listed = await gw.client.get("/v1/models", headers=bearer(KEY))
    assert r.status_code == 403 and r.json()["error"]["type"] == "model_not_allowed"
    assert r.json()["error"]["allowed"] == ["another-model"]
    assert listed.status_code == 200 and listed.json()["data"] == []  # only what the key may use


async def test_tools_are_scoped_per_key(sim_url):
    async with gateway(sim_url, api_keys=KEYS) as gw:
        allowed = await gw.client.post("/tools/calculator", json={"arguments": {"expression": "6*7"}},
                                       headers=bearer(OTHER))
        refused = await gw.client.post("/tools/current_time", json={"arguments": {}}, headers=bearer(OTHER))
        agent = await gw.client.post("/agent", json={"input": "hi", "tools": ["current_time"]},
                                     headers={**bearer(OTHER), "accept": "application/json"})
    assert allowed.status_code == 200 and allowed.json()["result"]["result"] == 42
    assert refused.status_code == 403 and refused.json()["error"]["type"] == "tool_not_allowed"
    assert agent.status_code == 403 and agent.json()["error"]["allowed"] == ["calculator"]


async def test_keys_never_reach_the_logs(sim_url, capfd):
    async with gateway(sim_url, api_keys=KEYS, log_level="DEBUG", log_format="json") as gw:
        ok = await gw.client.post("/predict", json=PREDICT, headers=bearer(KEY))
        await gw.client.post("/predict", json=PREDICT, headers=bearer("vg-" + "c" * 29))
    out, err = capfd.readouterr()
    assert ok.status_code == 200 and '"key_id": "app"' in err  # every line of the request names the key's id
    assert KEY not in out + err and "c" * 29 not in out + err


def test_key_mistakes_fail_at_start():
    from pydantic import ValidationError

    from app.settings import Settings

    for bad, says in (([{"id": "a"}], "exactly one of key or key_sha256"),
                      ([{"id": "a", "key": "short"}], "at least 16"),
                      ([{"id": "a", "key": KEY}, {"id": "a", "key": OTHER}], "each id may appear once"),
                      ([{"id": "a", "key": KEY, "scopes": ["everything"]}], "scopes")):
        with pytest.raises(ValidationError, match=says):
            Settings(api_keys=bad)
    from app.main import create_app
    from tests.support import make_settings

    with pytest.raises(ValueError, match="the same key"):
        create_app(make_settings("http://up", api_keys=[{"id": "a", "key": KEY}, {
            "id": "b", "key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}]))


async def test_a_keys_agent_runs_and_sessions_are_its_own(sim_url):
    keys = [{"id": "one", "key": KEY, "scopes": ["agent"]}, {"id": "two", "key": OTHER, "scopes": ["agent"]}]
    json_ = {"accept": "application/json"}
    async with gateway(sim_url, api_keys=keys) as gw:
        first = await gw.client.post("/agent", json={"input": "remember: the code is 1234", "tools": [],
                                                     "session_id": "s1"}, headers={**bearer(KEY), **json_})
        run_id = first.json()["run_id"]
        own = await gw.client.get(f"/agent/runs/{run_id}/events", headers=bearer(KEY))
        other = await gw.client.get(f"/agent/runs/{run_id}/events", headers=bearer(OTHER))
        # the same session id under another key is another session: it starts empty
        theirs = await gw.client.post("/agent", json={"input": "what is the code?", "tools": [], "session_id": "s1"},
                                      headers={**bearer(OTHER), **json_})
        sessions = gw.state.agent.sessions._sessions
    assert first.status_code == 200 and own.status_code == 200
    assert other.status_code == 404 and other.json()["error"]["type"] == "run_not_found"
    assert theirs.status_code == 200
    assert set(sessions) == {"one/s1", "two/s1"}
    assert "1234" in repr(sessions["one/s1"].messages) and "1234" not in repr(sessions["two/s1"].messages)


async def test_the_api_document_says_how_to_present_a_key_when_keys_are_configured(sim_url):
    async with gateway(sim_url, api_keys=KEYS) as gw:
        doc = (await gw.client.get("/openapi.json")).json()
    async with gateway(sim_url) as gw:
        open_doc = (await gw.client.get("/openapi.json")).json()
    assert set(doc["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert doc["paths"]["/predict"]["post"]["security"] and "security" not in doc["paths"]["/healthz"]["get"]
    assert doc["paths"]["/v1/chat/completions"]["post"]["security"]
    assert "securitySchemes" not in open_doc["components"]


async def test_only_a_key_with_priority_raise_may_raise_a_batch_to_interactive(sim_url):
    keys = [{"id": "plain", "key": KEY}, {"id": "raiser", "key": OTHER, "priority_raise": True}]
    body = {"signature": "q -> a", "batch": [{"q": "x"}, {"q": "y"}]}
    up = {"x-vgate-priority": "interactive"}
    async with gateway(sim_url, api_keys=keys) as gw:
        plain = await gw.client.post("/predict", json=body, headers={**bearer(KEY), **up})
        as_plain = gw.metric("vgate_queue_seconds_count", model="sim-model", priority="interactive")
        raised = await gw.client.post("/predict", json=body, headers={**bearer(OTHER), **up})
        as_raiser = gw.metric("vgate_queue_seconds_count", model="sim-model", priority="interactive")
    assert plain.status_code == 200 and raised.status_code == 200
    assert as_plain == 0 and as_raiser == 2  # the plain key's batch stayed batch; the raiser's went interactive
