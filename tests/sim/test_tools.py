"""Tool-call rules (documented in app/sim/tools.py and docs/simulator.md)."""

from __future__ import annotations

import json
import re

import jsonschema

from app.sim.server import SimConfig
from tests.sim.helpers import events, sim_client

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"enum": ["c", "f"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
SEARCH = {"type": "function", "function": {
    "name": "search", "parameters": {"type": "object", "properties": {"query": {"type": "string"},
                                                                       "k": {"type": "integer", "minimum": 1}},
                                     "required": ["query"]}}}
TOOLS = [WEATHER, SEARCH]
ID_RE = re.compile(r"^chatcmpl-tool-[0-9a-f]{32}$")


async def ask(client, messages, **extra):
    r = await client.post("/v1/chat/completions", json={"messages": messages, "tools": TOOLS, **extra})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def user(text):
    return [{"role": "user", "content": text}]


async def test_call_directives_make_parallel_calls(client):
    choice = await ask(client, user('Check two cities.\nCALL get_weather {"city": "Paris", "unit": "c"}\n'
                                    'CALL search {"query": "rome weather"}\nCALL unknown_tool {"x": 1}\n'
                                    "CALL search [1, 2]"))
    assert choice["finish_reason"] == "tool_calls"
    calls = choice["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "search"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Paris", "unit": "c"},
                                                                       {"query": "rome weather"}]
    assert all(ID_RE.match(c["id"]) and c["type"] == "function" for c in calls)
    assert len({c["id"] for c in calls}) == 2
    assert choice["message"]["content"] is None


async def test_no_directive_means_a_text_answer(client):
    choice = await ask(client, user("What is the weather like?"))
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["tool_calls"] == [] and choice["message"]["content"]


async def test_tool_choice_none_never_calls(client):
    choice = await ask(client, user('CALL search {"query": "x"}'), tool_choice="none")
    assert choice["finish_reason"] == "stop" and choice["message"]["tool_calls"] == []


async def test_tool_result_is_answered_with_its_content(client):
    messages = [
        *user('CALL get_weather {"city": "Paris", "unit": "c"}'),
        {"role": "assistant", "content": None, "tool_calls": [{"id": "chatcmpl-tool-1", "type": "function",
                                                               "function": {"name": "get_weather",
                                                                            "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "chatcmpl-tool-1", "content": "18 C and sunny"},
    ]
    choice = await ask(client, messages)
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == "Result: 18 C and sunny"
    # the CALL line in an earlier user message is not a directive any more
    two = [*messages, {"role": "tool", "tool_call_id": "chatcmpl-tool-2", "content": [{"type": "text", "text": "ok"}]}]
    assert (await ask(client, two))["message"]["content"] == "Result: 18 C and sunny\nResult: ok"


async def test_always_call_loops_forever(client):
    system = {"role": "system", "content": 'You are an agent.\nALWAYS CALL search {"query": "more"}'}
    messages = [system, *user("Find something.")]
    for step in range(3):
        choice = await ask(client, messages)
        assert choice["finish_reason"] == "tool_calls", step
        [call] = choice["message"]["tool_calls"]
        assert call["function"] == {"name": "search", "arguments": '{"query": "more"}'}
        messages += [{"role": "assistant", "content": None, "tool_calls": [call]},
                     {"role": "tool", "tool_call_id": call["id"], "content": f"result {step}"}]
    # in the first user message works too
    choice = await ask(client, user('ALWAYS CALL get_weather {"city": "Oslo", "unit": "c"}\nGo.'))
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


async def test_named_tool_choice_generates_valid_arguments(client):
    forced = {"type": "function", "function": {"name": "get_weather"}}
    choice = await ask(client, user("Anything at all."), tool_choice=forced)
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER["function"]["parameters"])
    # a directive for the named tool supplies the arguments; others are dropped
    choice = await ask(client, user('CALL search {"query": "a"}\nCALL get_weather {"city": "Lima", "unit": "f"}'),
                       tool_choice=forced)
    assert [json.loads(c["function"]["arguments"]) for c in choice["message"]["tool_calls"]] == [
        {"city": "Lima", "unit": "f"}]


async def test_required_calls_the_first_tool_or_the_directives(client):
    choice = await ask(client, user("Hello"), tool_choice="required")
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER["function"]["parameters"])
    choice = await ask(client, user('CALL search {"query": "z"}'), tool_choice="required")
    assert [c["function"]["name"] for c in choice["message"]["tool_calls"]] == ["search"]


async def test_streamed_tool_calls_follow_vllm(client):
    r = await client.post("/v1/chat/completions", json={
        "messages": user('CALL get_weather {"city": "Paris", "unit": "c"}\nCALL search {"query": "q"}'),
        "tools": TOOLS, "stream": True, "stream_options": {"include_usage": True}})
    evs = events(r.text)
    assert evs[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert evs[-1] == "[DONE]" and evs[-2]["choices"] == []
    assert evs[-3]["choices"][0]["finish_reason"] == "tool_calls"
    deltas = [e["choices"][0]["delta"]["tool_calls"] for e in evs[1:-3]]
    assert all(len(d) == 1 for d in deltas)
    calls: dict[int, dict] = {}
    for [d] in deltas:
        if "id" in d:  # the opening of a call: id, type, name, empty arguments
            assert d["index"] not in calls and ID_RE.match(d["id"]) and d["type"] == "function"
            assert d["function"]["arguments"] == ""
            calls[d["index"]] = {"name": d["function"]["name"], "arguments": ""}
        else:
            assert set(d) == {"index", "function"} and set(d["function"]) == {"arguments"}
            calls[d["index"]]["arguments"] += d["function"]["arguments"]
    assert calls == {0: {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'},
                     1: {"name": "search", "arguments": '{"query": "q"}'}}
    assert evs[-2]["usage"]["completion_tokens"] == len(deltas)


async def test_usage_counts_argument_tokens(client):
    short = await client.post("/v1/chat/completions", json={"messages": user('CALL search {"query": "a"}'),
                                                           "tools": TOOLS})
    long = await client.post("/v1/chat/completions", json={
        "messages": user('CALL search {"query": "a much longer query with many words in it"}'), "tools": TOOLS})
    assert long.json()["usage"]["completion_tokens"] - short.json()["usage"]["completion_tokens"] == 8


async def test_auto_tool_choice_needs_the_server_flag():
    async with sim_client(SimConfig(enable_auto_tool_choice=False)) as c:
        r = await c.post("/v1/chat/completions", json={"messages": user("hi"), "tools": TOOLS})
        assert r.status_code == 400
        assert "--enable-auto-tool-choice" in r.json()["error"]["message"]
        r = await c.post("/v1/chat/completions", json={"messages": user("hi"), "tools": TOOLS, "tool_choice": "none"})
        assert r.status_code == 200
