"""Generated content: lossless tokenizer, JSON that validates against the requested schema."""

from __future__ import annotations

import json

import jsonschema
import pytest

from app.sim.generate import instance_for_schema, seeded_rng, topics
from app.sim.tokens import count_prompt_tokens, tokenize
from tests.sim.helpers import USER, events

SCHEMAS = {
    "flat": {
        "type": "object",
        "properties": {"answer": {"type": "string"}, "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                       "count": {"type": "integer", "minimum": 3, "maximum": 5}, "ok": {"type": "boolean"}},
        "required": ["answer", "confidence", "count", "ok"],
        "additionalProperties": False,
    },
    "strings": {
        "type": "object",
        "properties": {
            "label": {"enum": ["positive", "negative", "neutral"]},
            "kind": {"const": "fixed"},
            "code": {"type": "string", "minLength": 40, "maxLength": 45},
            "short": {"type": "string", "maxLength": 3},
            "email": {"type": "string", "format": "email"},
            "when": {"type": "string", "format": "date-time"},
        },
        "required": ["label", "kind", "code", "short"],
    },
    "numbers": {
        "type": "object",
        "properties": {
            "open": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "even": {"type": "integer", "multipleOf": 2, "minimum": 11, "maximum": 15},
            "negative": {"type": "integer", "maximum": -10},
            "big": {"type": "integer", "minimum": 1000},
            "pinned": {"type": "integer", "minimum": 7, "maximum": 7},
        },
        "required": ["open", "even", "negative", "big", "pinned"],
    },
    "arrays": {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 4, "maxItems": 6},
            "unique": {"type": "array", "items": {"enum": [1, 2, 3]}, "minItems": 3, "uniqueItems": True},
            "pair": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "minItems": 2,
                     "maxItems": 2},
            "none": {"type": "array", "maxItems": 0},
        },
        "required": ["tags", "unique", "pair", "none"],
    },
    "unions": {
        "type": "object",
        "properties": {
            "maybe": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            "either": {"oneOf": [{"type": "string", "maxLength": 5}, {"type": "boolean"}]},
            "nullable": {"type": ["string", "null"]},
            "only_null": {"type": "null"},
            "both": {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                               {"properties": {"b": {"type": "string"}}, "required": ["b"]}]},
        },
        "required": ["maybe", "either", "nullable", "only_null", "both"],
    },
    "refs_pydantic_style": {
        "$defs": {
            "Contact": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "email": {"type": "string"},
                               "phone": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}},
                "required": ["name", "email"],
                "title": "Contact",
            },
        },
        "type": "object",
        "properties": {"contacts": {"type": "array", "items": {"$ref": "#/$defs/Contact"}, "minItems": 1}},
        "required": ["contacts"],
    },
    "recursive_tree": {
        "definitions": {
            "node": {
                "type": "object",
                "properties": {"value": {"type": "integer"},
                               "children": {"type": "array", "items": {"$ref": "#/definitions/node"}}},
                "required": ["value", "children"],
                "additionalProperties": False,
            },
        },
        "$ref": "#/definitions/node",
    },
    "nested": {
        "type": "object",
        "properties": {"outer": {"type": "object", "properties": {"inner": {"type": "object", "properties": {
            "leaf": {"type": "string", "enum": ["x"]}}, "required": ["leaf"]}}, "required": ["inner"]}},
        "required": ["outer"],
    },
    "free_map": {"type": "object", "additionalProperties": {"type": "integer"}, "minProperties": 2},
    "bare_array": {"type": "array", "items": {"type": "number"}},
    "empty": {},
}


def test_tokenizer_is_lossless_and_counts_words_and_punctuation():
    text = "Hello, world!\n\n  It's 42 {\"a\": [1, 2]} — done."
    tokens = tokenize(text)
    assert "".join(tokens) == text
    assert tokenize("Hello, world!") == ["Hello", ",", " world", "!"]
    assert count_prompt_tokens([{"role": "user", "content": "Hello, world!"}], None) == 4 + 4 + 3


def test_prompt_tokens_cover_content_parts_tool_calls_and_tools():
    base = count_prompt_tokens(USER, None)
    parts = [{"role": "user", "content": [{"type": "text", "text": USER[0]["content"]}]}]
    assert count_prompt_tokens(parts, None) == base
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert count_prompt_tokens(USER, tools) > base
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]}
    assert count_prompt_tokens([*USER, call], None) > base + 4


def test_topics_skip_stopwords_and_keep_names():
    assert topics("What is the capital of France?") == ["capital", "France"]
    assert topics("??") == ["your request", "the context", "the details"]


@pytest.mark.parametrize("name", SCHEMAS)
def test_instances_validate(name):
    schema = SCHEMAS[name]
    validator = jsonschema.validators.validator_for(schema)(schema)
    for seed in range(25):
        value = instance_for_schema(schema, seeded_rng(seed, name), ["capital", "France"])
        errors = [e.message for e in validator.iter_errors(value)]
        assert not errors, (seed, value, errors)
        json.dumps(value)  # serialisable


def test_instances_are_plausible():
    value = instance_for_schema(SCHEMAS["refs_pydantic_style"], seeded_rng(0, "x"), ["capital", "France"])
    contact = value["contacts"][0]
    assert " " in contact["name"] and "@" in contact["email"]
    flat = instance_for_schema(SCHEMAS["flat"], seeded_rng(0, "x"), ["capital", "France"])
    assert "capital" in flat["answer"].lower() or "france" in flat["answer"].lower()


@pytest.mark.parametrize("name", ["flat", "refs_pydantic_style", "unions", "recursive_tree"])
async def test_json_schema_response_format_validates(client, name):
    schema = SCHEMAS[name]
    body = {"messages": USER, "response_format": {"type": "json_schema", "json_schema": {"name": name,
                                                                                          "schema": schema}}}
    r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200
    content = r.json()["choices"][0]["message"]["content"]
    jsonschema.validate(json.loads(content), schema)

    r = await client.post("/v1/chat/completions", json={**body, "stream": True})
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events(r.text)[1:-1])
    assert streamed == content


async def test_structured_outputs_json_object_and_choice(client):
    schema = SCHEMAS["flat"]
    r = await client.post("/v1/chat/completions", json={"messages": USER, "structured_outputs": {"json": schema}})
    jsonschema.validate(json.loads(r.json()["choices"][0]["message"]["content"]), schema)
    r = await client.post("/v1/chat/completions",
                          json={"messages": USER, "structured_outputs": {"json": json.dumps(schema)}})
    jsonschema.validate(json.loads(r.json()["choices"][0]["message"]["content"]), schema)

    r = await client.post("/v1/chat/completions", json={"messages": USER, "response_format": {"type": "json_object"}})
    value = json.loads(r.json()["choices"][0]["message"]["content"])
    assert isinstance(value, dict) and value

    r = await client.post("/v1/chat/completions",
                          json={"messages": USER, "structured_outputs": {"choice": ["yes", "no"]}})
    assert r.json()["choices"][0]["message"]["content"] in ("yes", "no")

    r = await client.post("/v1/chat/completions", json={"messages": USER, "structured_outputs": {"regex": "a+"}})
    assert r.status_code == 400 and "regex" in r.json()["error"]["message"]


async def test_truncated_json_is_cut_like_a_real_model(client):
    body = {"messages": USER, "max_tokens": 4,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMAS["flat"]}}}
    choice = (await client.post("/v1/chat/completions", json=body)).json()["choices"][0]
    assert choice["finish_reason"] == "length"
    with pytest.raises(ValueError):
        json.loads(choice["message"]["content"])
