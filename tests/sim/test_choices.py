"""n choices from one chat request (vLLM's `n`), and the `bad_output` fault that breaks a structured reply."""

from __future__ import annotations

import json

import pytest

from app.sim.faults import FaultSpec
from tests.sim.helpers import USER, events

SCHEMA = {"type": "object", "properties": {"label": {"enum": ["a", "b", "c"]}, "score": {"type": "integer"},
                                           "note": {"type": "string"}},
          "required": ["label", "score", "note"], "additionalProperties": False}
FMT = {"type": "json_schema", "json_schema": {"name": "out", "schema": SCHEMA}}
BODY = {"messages": USER, "response_format": FMT}
STREAM = {"stream": True, "stream_options": {"include_usage": True}}


def contents(body: dict) -> list[str]:
    return [c["message"]["content"] for c in body["choices"]]


def joined(stream_text: str) -> tuple[dict[int, str], dict[int, str], dict]:
    """A stream's content and finish_reason per choice index, and its usage."""
    text: dict[int, str] = {}
    finish: dict[int, str] = {}
    usage: dict = {}
    for e in events(stream_text):
        if e == "[DONE]":
            continue
        if e.get("usage"):
            usage = e["usage"]
        for c in e["choices"]:
            text[c["index"]] = text.get(c["index"], "") + (c["delta"].get("content") or "")
            if c["finish_reason"]:
                finish[c["index"]] = c["finish_reason"]
    return text, finish, usage


async def test_n_choices_differ_each_seeded_by_its_index(client):
    one = (await client.post("/v1/chat/completions", json=BODY)).json()
    r = await client.post("/v1/chat/completions", json={**BODY, "n": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert all(c["finish_reason"] == "stop" for c in body["choices"])
    texts = contents(body)
    assert texts[0] == contents(one)[0]  # choice 0 is what an n=1 request gets
    assert len(set(texts)) == 4  # each its own sample
    for t in texts:
        value = json.loads(t)
        assert value["label"] in "abc" and isinstance(value["score"], int)
    again = (await client.post("/v1/chat/completions", json={**BODY, "n": 4})).json()
    assert contents(again) == texts  # deterministic


async def test_usage_counts_the_prompt_once_and_sums_the_choices(client):
    one = (await client.post("/v1/chat/completions", json=BODY)).json()
    body = (await client.post("/v1/chat/completions", json={**BODY, "n": 3})).json()
    assert body["usage"]["prompt_tokens"] == one["usage"]["prompt_tokens"]
    await client.post("/sim/reset")
    r = await client.post("/v1/chat/completions", json={**BODY, "n": 3, **STREAM})
    text, finish, usage = joined(r.text)
    assert usage == body["usage"]
    chunks = [e for e in events(r.text) if e != "[DONE]" and e["choices"]
              and e["choices"][0]["delta"].get("content")]
    assert usage["completion_tokens"] == len(chunks)  # summed over the choices
    stats = (await client.get("/sim/stats")).json()
    assert stats["prompt_tokens_total"] == usage["prompt_tokens"]
    assert stats["generation_tokens_total"] == usage["completion_tokens"]
    assert stats["request_success_total"]["stop"] == 3 and stats["requests_total"] == 1


async def test_stream_has_a_role_chunk_per_choice_and_the_same_choices(client):
    body = (await client.post("/v1/chat/completions", json={**BODY, "n": 3})).json()
    r = await client.post("/v1/chat/completions", json={**BODY, "n": 3, **STREAM})
    evs = [e for e in events(r.text) if e != "[DONE]"]
    roles = [e["choices"][0]["index"] for e in evs if e["choices"] and e["choices"][0]["delta"].get("role")]
    assert roles == [0, 1, 2]
    text, finish, _ = joined(r.text)
    assert [text[i] for i in range(3)] == contents(body)
    assert finish == {0: "stop", 1: "stop", 2: "stop"}


async def test_n_is_checked(client):
    for bad in (0, -1, "2", 129):
        r = await client.post("/v1/chat/completions", json={**BODY, "n": bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == "n", bad
    r = await client.post("/v1/completions", json={"prompt": "hi", "n": 2})
    assert r.status_code == 400  # one choice per prompt there


def test_bad_output_spec():
    assert FaultSpec.parse("bad_output=1").bad_output == "text"
    assert FaultSpec.parse("bad_output=type;bad_choices=2") == FaultSpec(bad_output="type", bad_choices=2)
    assert FaultSpec.parse("bad_output=1").kind == "bad_output"
    for bad in ("bad_output=maybe", "bad_output=1;bad_choices=-1"):
        with pytest.raises(ValueError):
            FaultSpec.parse(bad)


async def test_bad_output_text_ignores_the_format(client):
    r = await client.post("/v1/chat/completions", json=BODY, headers={"x-sim-fault": "bad_output=1"})
    assert r.status_code == 200
    text = contents(r.json())[0]
    with pytest.raises(ValueError):
        json.loads(text)
    stats = (await client.get("/sim/stats")).json()
    assert stats["faults_injected_total"]["bad_output"] >= 1


async def test_bad_output_type_breaks_the_first_value(client):
    good = json.loads(contents((await client.post("/v1/chat/completions", json=BODY)).json())[0])
    r = await client.post("/v1/chat/completions", json=BODY, headers={"x-sim-fault": "bad_output=type"})
    bad = json.loads(contents(r.json())[0])
    assert bad == {**good, "label": 12345}  # a number where a string belongs


async def test_bad_output_times_and_bad_choices(client):
    fault = {"x-sim-fault": "bad_output=type;times=1;group=g-choices;bad_choices=2"}
    first = (await client.post("/v1/chat/completions", json={**BODY, "n": 3}, headers=fault)).json()
    labels = [json.loads(t)["label"] for t in contents(first)]
    assert labels[:2] == [12345] * 2 and labels[2] in "abc"
    second = (await client.post("/v1/chat/completions", json={**BODY, "n": 3}, headers=fault)).json()
    assert all(json.loads(t)["label"] in "abc" for t in contents(second))  # times=1: only the first
