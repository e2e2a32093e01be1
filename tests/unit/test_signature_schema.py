"""A signature's JSON schemas (what vLLM's structured outputs receive)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.errors import OutputValidationError
from app.services.signature import parse_signature

# --- a small JSON-schema checker for exactly the keywords the signature emits ------------------

SCHEMA_KEYWORDS = {"type", "properties", "required", "additionalProperties", "items", "enum", "anyOf", "description"}


def schema_accepts(schema: dict[str, Any], value: Any) -> bool:
    assert set(schema) <= SCHEMA_KEYWORDS, f"unexpected keywords {set(schema) - SCHEMA_KEYWORDS}"
    if "anyOf" in schema:
        return any(schema_accepts(s, value) for s in schema["anyOf"])
    if "enum" in schema:
        same = [v for v in schema["enum"] if type(v) is type(value) or (
            not isinstance(v, bool) and not isinstance(value, bool)
            and isinstance(v, (int, float)) and isinstance(value, (int, float)))]
        if not any(v == value for v in same):
            return False
    t = schema.get("type")
    if t == "string" and not isinstance(value, str):
        return False
    if t == "boolean" and not isinstance(value, bool):
        return False
    if t == "integer" and (isinstance(value, bool) or not isinstance(value, int)):
        return False
    if t == "number" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return False
    if t == "null" and value is not None:
        return False
    if t == "array":
        if not isinstance(value, list):
            return False
        return all(schema_accepts(schema["items"], v) for v in value)
    if t == "object":
        if not isinstance(value, dict):
            return False
        props = schema.get("properties", {})
        if any(k not in value for k in schema.get("required", [])):
            return False
        extra = schema.get("additionalProperties", True)
        for k, v in value.items():
            if k in props:
                if not schema_accepts(props[k], v):
                    return False
            elif extra is False:
                return False
            elif isinstance(extra, dict) and not schema_accepts(extra, v):
                return False
    return True


def walk(schema: Any) -> list[dict[str, Any]]:
    out = []
    if isinstance(schema, dict):
        out.append(schema)
        for v in schema.values():
            out += walk(v)
    elif isinstance(schema, list):
        for v in schema:
            out += walk(v)
    return out


# --- JSON schema -------------------------------------------------------------------------


RICH = (
    "q -> answer: str, score: int, ratio: float, ok: bool, tags: list[str], "
    "counts: dict[str, int], label: Literal['pos', 'neg'], mixed: Literal['a', 1, 2.5, True], "
    "maybe: Optional[list[int]], nested: dict[str, list[Optional[Literal[1, 2]]]]"
)


def test_output_json_schema_shape() -> None:
    sig = parse_signature(RICH)
    schema = sig.output_json_schema()
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert list(schema["properties"]) == list(sig.output_names)
    assert schema["required"] == list(sig.output_names)
    p = schema["properties"]
    assert p["answer"] == {"type": "string"}
    assert p["score"] == {"type": "integer"}
    assert p["ratio"] == {"type": "number"}
    assert p["ok"] == {"type": "boolean"}
    assert p["tags"] == {"type": "array", "items": {"type": "string"}}
    assert p["counts"] == {"type": "object", "additionalProperties": {"type": "integer"}}
    assert p["label"] == {"enum": ["pos", "neg"], "type": "string"}
    assert p["mixed"] == {"enum": ["a", 1, 2.5, True]}
    assert p["maybe"] == {"anyOf": [{"type": "array", "items": {"type": "integer"}}, {"type": "null"}]}
    assert p["nested"] == {
        "type": "object",
        "additionalProperties": {
            "type": "array",
            "items": {"anyOf": [{"enum": [1, 2], "type": "integer"}, {"type": "null"}]},
        },
    }
    for node in walk(schema):  # only simple keywords: no $ref/$defs/format
        assert not any(k.startswith("$") for k in node)
    json.dumps(schema)


def test_descriptions_become_schema_descriptions() -> None:
    sig = parse_signature({"outputs": {"a": {"type": "Optional[int]", "desc": "the count"}}})
    assert sig.output_json_schema()["properties"]["a"] == {
        "anyOf": [{"type": "integer"}, {"type": "null"}],
        "description": "the count",
    }


def test_input_json_schema_marks_optional_inputs_not_required() -> None:
    schema = parse_signature("q: str, hint: Optional[str] -> a").input_json_schema()
    assert schema["required"] == ["q"]
    assert list(schema["properties"]) == ["q", "hint"]


def test_schema_text_is_pinned_byte_for_byte() -> None:
    """Structured-output requests carry this text; key order included (``type`` first)."""
    sig = parse_signature({
        "inputs": {"q": "str", "hint": "Optional[str]"},
        "outputs": {"a": {"type": 'Literal["y", "n"]', "desc": "yes or no"}, "n": "Optional[int]",
                    "d": "dict[str, list[float]]"},
    })
    assert json.dumps(sig.output_json_schema()) == (
        '{"type": "object", "properties": {"a": {"enum": ["y", "n"], "type": "string", "description": "yes or no"}, '
        '"n": {"anyOf": [{"type": "integer"}, {"type": "null"}]}, '
        '"d": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "number"}}}}, '
        '"required": ["a", "n", "d"], "additionalProperties": false}'
    )
    assert json.dumps(sig.input_json_schema()) == (
        '{"type": "object", "properties": {"q": {"type": "string"}, '
        '"hint": {"anyOf": [{"type": "string"}, {"type": "null"}]}}, "required": ["q"], "additionalProperties": false}'
    )
    assert json.dumps(parse_signature("-> a").input_json_schema()) == (
        '{"type": "object", "properties": {}, "required": [], "additionalProperties": false}'
    )


def test_literal_enum_keeps_declared_order_whatever_was_parsed_before() -> None:
    # typing caches Optional[X] by equality and Literal['a', 1] == Literal[1, 'a']
    for order in (["a", 1, True], [True, 1, "a"], [1, "a", True]):
        text = "Literal[" + ", ".join(json.dumps(v) if isinstance(v, str) else str(v) for v in order) + "]"
        sig = parse_signature(f"q -> x: {text}, y: Optional[{text}], z: list[{text} | None]")
        p = sig.output_json_schema()["properties"]
        assert p["x"]["enum"] == order
        assert p["y"]["anyOf"][0]["enum"] == order
        assert p["z"]["items"]["anyOf"][0]["enum"] == order
        assert sig.outputs[1].type.to_json_schema()["anyOf"][0]["enum"] == order


def test_schemas_are_fresh_copies() -> None:
    sig = parse_signature("q -> a: list[str]")
    sig.output_json_schema()["properties"]["a"]["items"]["type"] = "integer"
    sig.outputs[0].type.to_json_schema()["items"]["type"] = "integer"
    assert sig.output_json_schema()["properties"]["a"] == {"type": "array", "items": {"type": "string"}}
    assert sig.outputs[0].type.to_json_schema() == {"type": "array", "items": {"type": "string"}}


GOOD_SAMPLE = {
    "answer": "x", "score": 3, "ratio": 0.5, "ok": True, "tags": ["a"], "counts": {"k": 1},
    "label": "neg", "mixed": 2.5, "maybe": None, "nested": {"z": [1, None, 2]},
}
BAD_SAMPLES = [
    {**GOOD_SAMPLE, "score": 3.5},
    {**GOOD_SAMPLE, "score": True},
    {**GOOD_SAMPLE, "ratio": False},
    {**GOOD_SAMPLE, "answer": 1},
    {**GOOD_SAMPLE, "tags": "a"},
    {**GOOD_SAMPLE, "tags": [1]},
    {**GOOD_SAMPLE, "counts": {"k": "v"}},
    {**GOOD_SAMPLE, "label": "meh"},
    {**GOOD_SAMPLE, "mixed": 1.5},
    {**GOOD_SAMPLE, "mixed": "b"},
    {**GOOD_SAMPLE, "maybe": [1, "x"]},
    {**GOOD_SAMPLE, "nested": {"z": [3]}},
    {**GOOD_SAMPLE, "nested": {"z": [True]}},
    {k: v for k, v in GOOD_SAMPLE.items() if k != "label"},
]


def test_schema_and_validator_agree_on_samples() -> None:
    sig = parse_signature(RICH)
    schema = sig.output_json_schema()
    assert schema_accepts(schema, GOOD_SAMPLE)
    assert sig.parse_outputs(json.dumps(GOOD_SAMPLE)) == GOOD_SAMPLE
    for bad in BAD_SAMPLES:
        assert not schema_accepts(schema, bad), bad
        with pytest.raises(OutputValidationError):
            sig.parse_outputs(json.dumps(bad))


def test_schema_is_valid_json_schema_if_jsonschema_installed() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    sig = parse_signature(RICH)
    schema = sig.output_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(GOOD_SAMPLE, schema)
    for bad in BAD_SAMPLES:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
