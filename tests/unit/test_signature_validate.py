"""Validation of request inputs and of the model's reply against a signature."""

from __future__ import annotations

import json

import pytest

from app.errors import InvalidRequestError, OutputValidationError
from app.services.signature import parse_signature
from app.services.signature import validate as signature_validate

# --- validate_inputs -------------------------------------------------------------------------


def test_validate_inputs_returns_coerced_values_in_order() -> None:
    sig = parse_signature("context: list[str], k: int, question -> answer")
    out = sig.validate_inputs({"question": "q", "k": "3", "context": ["a", "b"]})
    assert out == {"context": ["a", "b"], "k": 3, "question": "q"}
    assert list(out) == ["context", "k", "question"]


def test_validate_inputs_missing_and_extra() -> None:
    sig = parse_signature("context: list[str], question -> answer")
    with pytest.raises(InvalidRequestError) as info:
        sig.validate_inputs({"question": "q", "contxt": []})
    e = info.value
    assert e.status_code == 422
    assert "missing input field(s): 'context'" in e.message
    assert "unknown input field(s): 'contxt'" in e.message
    assert e.details["missing"] == ["context"]
    assert e.details["extra"] == ["contxt"]
    assert e.details["expected"] == ["context", "question"]


def test_validate_inputs_type_errors_carry_pydantic_location() -> None:
    sig = parse_signature("context: list[str], question -> answer")
    with pytest.raises(InvalidRequestError) as info:
        sig.validate_inputs({"context": 3, "question": "q"})
    e = info.value
    assert e.status_code == 422
    assert e.details["errors"] == [{"loc": ["context"], "msg": "Input should be a valid list", "type": "list_type"}]
    assert "'context': Input should be a valid list" in e.message
    with pytest.raises(InvalidRequestError) as info:
        sig.validate_inputs({"context": ["ok", 5], "question": "q"})
    assert info.value.details["errors"][0]["loc"] == ["context", 1]
    json.dumps(info.value.body())


def test_validate_inputs_rejects_non_mapping() -> None:
    with pytest.raises(InvalidRequestError, match="inputs must be an object"):
        parse_signature("q -> a").validate_inputs(["q"])


def test_optional_inputs_may_be_omitted() -> None:
    sig = parse_signature("q, hint: Optional[str] -> a")
    assert sig.validate_inputs({"q": "x"}) == {"q": "x", "hint": None}
    with pytest.raises(InvalidRequestError):
        sig.validate_inputs({"q": "x", "hint": 3})


def test_str_input_is_not_coerced_from_number() -> None:
    with pytest.raises(InvalidRequestError):
        parse_signature("q -> a").validate_inputs({"q": 5})


def test_fields_named_like_pydantic_attributes_work() -> None:
    sig = parse_signature("json, model_config, _private, schema -> copy: int, dict: str")
    values = {"json": "a", "model_config": "b", "_private": "c", "schema": "d"}
    assert sig.validate_inputs(values) == values
    assert sig.parse_outputs('{"copy": 1, "dict": "x"}') == {"copy": 1, "dict": "x"}


# --- parse_outputs -----------------------------------------------------------------------------


def test_parse_outputs_success_with_lax_coercion_and_extra_keys_dropped() -> None:
    sig = parse_signature("q -> answer: str, n: int, score: float")
    raw = '{"answer": "Paris", "n": "3", "score": 1, "extra": "dropped"}'
    out = sig.parse_outputs(raw)
    assert out == {"answer": "Paris", "n": 3, "score": 1.0}
    assert type(out["n"]) is int and type(out["score"]) is float


def test_parse_outputs_tolerates_code_fence_and_whitespace() -> None:
    sig = parse_signature("q -> a: int")
    assert sig.parse_outputs('  ```json\n{"a": 1}\n```  ') == {"a": 1}
    assert sig.parse_outputs('\n{"a": 1}\n') == {"a": 1}


@pytest.mark.parametrize(
    ("raw", "piece", "error_type"),
    [
        ("not json", "not valid JSON", "json_invalid"),
        ('{"a": 1', "not valid JSON", "json_invalid"),
        ("", "not valid JSON", "json_invalid"),
        ('{"a": NaN}', "not valid JSON", "json_invalid"),
        ("[1, 2]", "not an object", "dict_type"),
        ("null", "not an object", "dict_type"),
        ('{"a": "three"}', "'a': Input should be a valid integer", "int_parsing"),
        ('{"a": 1.5}', "'a'", "int_from_float"),
        ('{"a": true}', "'a': Input should be an integer, not a boolean", "int_type"),
        ('{"b": 1}', "'a': Field required", "missing"),
    ],
)
def test_parse_outputs_failures_carry_raw_text(raw: str, piece: str, error_type: str) -> None:
    sig = parse_signature("q -> a: int")
    with pytest.raises(OutputValidationError) as info:
        sig.parse_outputs(raw)
    e = info.value
    assert piece in e.message
    assert e.details["raw"] == raw
    assert e.details["errors"][0]["type"] == error_type
    assert e.status_code == 502 and e.body()["type"] == "output_validation_error"
    json.dumps(e.body())


def test_parse_outputs_literal_matching_is_exact() -> None:
    sig = parse_signature("q -> v: Literal['a', 2, True]")
    assert sig.parse_outputs('{"v": true}') == {"v": True}
    assert sig.parse_outputs('{"v": 2.0}') == {"v": 2}
    for raw in ('{"v": 1}', '{"v": "2"}', '{"v": "b"}', '{"v": null}', '{"v": false}'):
        with pytest.raises(OutputValidationError, match="Input should be one of"):
            sig.parse_outputs(raw)
    assert type(parse_signature("q -> v: Literal[1]").parse_outputs('{"v": 1.0}')["v"]) is int


def test_parse_outputs_missing_optional_becomes_none() -> None:
    sig = parse_signature("q -> a: str, b: Optional[int]")
    assert sig.parse_outputs('{"a": "x"}') == {"a": "x", "b": None}
    assert sig.parse_outputs('{"a": "x", "b": null}') == {"a": "x", "b": None}


def test_parse_outputs_nested_errors_have_paths() -> None:
    sig = parse_signature("q -> d: dict[str, list[int]]")
    with pytest.raises(OutputValidationError) as info:
        sig.parse_outputs('{"d": {"k": [1, "x"]}}')
    assert info.value.details["errors"][0]["loc"] == ["d", "k", 1]


def test_parse_outputs_with_reasoning() -> None:
    cot = parse_signature("q -> a: int").with_reasoning()
    assert cot.parse_outputs('{"reasoning": "2+2", "a": 4}') == {"reasoning": "2+2", "a": 4}
    with pytest.raises(OutputValidationError, match="reasoning"):
        cot.parse_outputs('{"a": 4}')


def test_output_model_is_cached_per_signature_structure() -> None:
    signature_validate._fields_model.cache_clear()
    a = parse_signature("q -> a: int", "one")
    b = parse_signature("q -> a: int", "two")
    a.parse_outputs('{"a": 1}')
    b.parse_outputs('{"a": 1}')
    a.parse_outputs('{"a": 2}')
    info = signature_validate._fields_model.cache_info()
    assert info.misses == 1 and info.hits == 2
