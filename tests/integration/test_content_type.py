"""A JSON body is read as JSON whatever Content-Type it came with (curl -d sends
application/x-www-form-urlencoded); a body that is not JSON is still a 400 invalid_json."""

from __future__ import annotations

import json

import pytest

from app.routers.json_body import read_body_as_json
from tests.support import gateway

CONTENT_TYPES = [None, "text/plain", "application/x-www-form-urlencoded", "text/plain; charset=utf-8",
                 "application/octet-stream"]

REQUESTS = [
    ("/predict", {"signature": "q -> a", "inputs": {"q": "x"}}, lambda b: "outputs" in b),
    ("/agent", {"input": "hello"}, lambda b: b["stop_reason"] == "answer"),
    ("/tools/calculator", {"arguments": {"expression": "6*7"}}, lambda b: b["result"]["result"] == 42),
]


def _headers(content_type: str | None) -> dict[str, str]:
    headers = {"accept": "application/json"}
    if content_type is not None:
        headers["content-type"] = content_type
    return headers


@pytest.mark.parametrize("content_type", CONTENT_TYPES)
async def test_a_json_body_is_accepted_whatever_its_content_type(sim_url, content_type):
    async with gateway(sim_url) as gw:
        for path, payload, ok in REQUESTS:
            r = await gw.client.post(path, content=json.dumps(payload).encode(), headers=_headers(content_type))
            assert r.status_code == 200, (path, r.text)
            assert ok(r.json()), (path, r.text)


# "application/json" followed by more letters is another type (JSON Lines, JSON5): FastAPI would not
# parse it as JSON, so the gateway must rewrite it like any other type, not take it for JSON
NEAR_JSON = ["application/jsonl", "application/json5", "application/jsonlines; charset=utf-8", "application/json-seq"]
# what is JSON already, and must be left as it came
JSON_TYPES = ["application/json", "application/json; charset=utf-8", "application/json;charset=utf-8",
              "application/json ; charset=utf-8", "Application/JSON", "application/merge-patch+json"]


@pytest.mark.parametrize("content_type", NEAR_JSON + JSON_TYPES)
async def test_json_and_near_json_content_types(sim_url, content_type):
    async with gateway(sim_url) as gw:
        for path, payload, ok in REQUESTS:
            r = await gw.client.post(path, content=json.dumps(payload).encode(), headers=_headers(content_type))
            assert r.status_code == 200, (path, r.text)
            assert ok(r.json()), (path, r.text)


@pytest.mark.parametrize(("content_type", "is_json"), [(t, False) for t in NEAR_JSON] + [(t, True) for t in JSON_TYPES])
def test_only_json_types_are_left_unrewritten(content_type, is_json):
    scope = {"headers": [(b"content-type", content_type.encode())]}
    read_body_as_json(scope)
    assert scope["headers"] == [(b"content-type", content_type.encode() if is_json else b"application/json")]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/json",
                                          "application/jsonl"])
async def test_a_body_that_is_not_json_is_400(sim_url, content_type):
    async with gateway(sim_url) as gw:
        for path, _, _ in REQUESTS:
            r = await gw.client.post(path, content=b"q=what&a=1", headers=_headers(content_type))
            assert r.status_code == 400, (path, r.text)
            assert r.json()["error"]["type"] == "invalid_json", (path, r.text)


@pytest.mark.parametrize("content_type", [None, "application/json"])
async def test_a_body_that_is_not_utf8_is_400_invalid_json(sim_url, content_type):
    async with gateway(sim_url) as gw:
        for path, _, _ in REQUESTS:
            r = await gw.client.post(path, content=b'{"input": "caf\xe9"}', headers=_headers(content_type))
            assert r.status_code == 400, (path, r.text)
            assert r.json()["error"]["type"] == "invalid_json", (path, r.text)
