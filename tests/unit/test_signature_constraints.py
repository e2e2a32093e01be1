"""Field constraints (DSPy's OutputField ge/le/min_length/pattern/...), the output schema's budgets,
and byte-identical schemas for identical signatures."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.errors import InvalidRequestError, OutputValidationError, SchemaTooComplexError, SignatureError
from app.services.adapter import response_format
from app.services.signature import (
    MAX_PATTERN_CHARS,
    MAX_SCHEMA_BYTES,
    MAX_SCHEMA_DEPTH,
    MAX_UNION_WIDTH,
    Constraints,
    Field,
    TypeSpec,
    parse_signature,
)
from app.services.signature.checks import MAX_SCHEMA_STRING_LENGTH


def err(spec: Any) -> SignatureError:
    with pytest.raises(SignatureError) as info:
        parse_signature(spec)
    return info.value


def props(spec: Any) -> dict[str, Any]:
    return parse_signature(spec).output_json_schema()["properties"]  # type: ignore[no-any-return]


# --- constraints: the schema -------------------------------------------------------------------


def test_constraints_are_in_the_schema_where_the_grammar_enforces_them() -> None:
    p = props({"outputs": {
        "stars": {"type": "int", "ge": 1, "le": 5},
        "p": {"type": "float", "gt": 0, "lt": 1},
        "maybe": {"type": "Optional[int]", "ge": 0},
        "code": {"type": "str", "min_length": 2, "max_length": 8},
        "tags": {"type": "list[str]", "min_items": 1, "max_items": 3},
        "sku": {"type": "str", "pattern": "^[A-Z]{3}-[0-9]{4}$", "max_length": 8},
        "long": {"type": "str", "min_length": 1, "max_length": MAX_SCHEMA_STRING_LENGTH + 1},
    }})
    assert p["stars"] == {"type": "integer", "maximum": 5, "minimum": 1}
    assert p["p"] == {"type": "number", "exclusiveMaximum": 1, "exclusiveMinimum": 0}
    assert p["maybe"] == {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "null"}]}
    assert p["code"] == {"type": "string", "maxLength": 8, "minLength": 2}
    assert p["tags"] == {"type": "array", "items": {"type": "string"}, "maxItems": 3, "minItems": 1}
    # xgrammar drops length bounds beside a pattern, and compiles long length bounds slowly
    assert p["sku"] == {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"}
    assert p["long"] == {"type": "string", "minLength": 1}


def test_constraints_are_validated_on_outputs() -> None:
    spec = {"outputs": {"stars": {"type": "int", "ge": 1, "le": 5},
                        "sku": {"type": "str", "pattern": "^[A-Z]{3}$", "max_length": 3},
                        "tags": {"type": "list[str]", "max_items": 2},
                        "note": {"type": "Optional[str]", "max_length": 40}}}
    sig = parse_signature(spec)
    good = {"stars": 5, "sku": "ABC", "tags": ["a"], "note": None}
    assert sig.parse_outputs(json.dumps(good)) == good
    for field, value, error_type in (("stars", 6, "less_than_equal"), ("stars", 0, "greater_than_equal"),
                                     ("sku", "abc", "string_pattern_mismatch"), ("tags", ["a", "b", "c"], "too_long"),
                                     ("note", "x" * 41, "string_too_long")):
        with pytest.raises(OutputValidationError) as info:
            sig.parse_outputs(json.dumps({**good, field: value}))
        assert info.value.status_code == 502 and info.value.type == "output_validation_error"
        assert [(e["loc"], e["type"]) for e in info.value.details["errors"]] == [([field], error_type)]


def test_constraints_are_validated_on_inputs() -> None:
    sig = parse_signature({"inputs": {"text": {"type": "str", "min_length": 1}, "k": {"type": "int", "gt": 0}},
                           "outputs": {"a": "str"}})
    assert sig.validate_inputs({"text": "x", "k": 1}) == {"text": "x", "k": 1}
    with pytest.raises(InvalidRequestError) as info:
        sig.validate_inputs({"text": "", "k": 0})
    assert info.value.status_code == 422
    assert [e["loc"] for e in info.value.details["errors"]] == [["text"], ["k"]]


def test_constraints_in_object_types() -> None:
    spec = {"types": {"Review": {"stars": {"type": "int", "ge": 1, "le": 5}}}, "outputs": {"r": "list[Review]"}}
    sig = parse_signature(spec)
    assert sig.output_json_schema()["$defs"]["Review"]["properties"]["stars"] == {
        "type": "integer", "maximum": 5, "minimum": 1}
    with pytest.raises(OutputValidationError) as info:
        sig.parse_outputs('{"r": [{"stars": 3}, {"stars": 9}]}')
    assert info.value.details["errors"][0]["loc"] == ["r", 1, "stars"]


# --- constraints: errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "pieces"), [
    ({"type": "int", "pattern": "^a$"}, ["constraint 'pattern' needs a string type (str), not 'int'", "field 'x'"]),
    ({"type": "str", "ge": 1}, ["constraint 'ge' needs a number type (int/float), not 'str'"]),
    ({"type": "list[int]", "min_length": 1}, ["'min_length' needs a string type"]),
    ({"type": "str", "max_items": 1}, ["'max_items' needs a list type"]),
    ({"type": "int | float", "ge": 1}, ["needs a number type", "'int | float'"]),
    ({"type": "Literal[1, 2]", "le": 1}, ["needs a number type"]),
    ({"type": "int", "ge": "1"}, ["constraint 'ge' must be a number, not str"]),
    ({"type": "int", "ge": True}, ["must be a number, not bool"]),
    ({"type": "str", "min_length": -1}, ["must be between 0 and"]),
    ({"type": "str", "min_length": 1.5}, ["must be an integer"]),
    ({"type": "int", "ge": 5, "le": 1}, ["ge=5 and le=1 leave no value"]),
    ({"type": "int", "gt": 1, "lt": 1}, ["leave no value"]),
    ({"type": "str", "pattern": "[a-"}, ["invalid pattern '[a-'", "unclosed character class"]),
    ({"type": "str", "pattern": "(?=a)b"}, ["invalid pattern", "look-around"]),
    ({"type": "str", "pattern": "(a)\\1"}, ["invalid pattern", "backreferences"]),
    ({"type": "str", "pattern": "a" * (MAX_PATTERN_CHARS + 1)}, ["pattern is too long"]),
    ({"type": "str", "pattern": "^[a-z]{1,5000}$"}, ["repeats too much (5000 atoms", "max 1000"]),
    ({"type": "str", "pattern": "^(a{50}){50}$"}, ["repeats too much (2500 atoms"]),
    ({"type": "str", "minimum": 1}, ["unknown key(s) 'minimum' for field 'x'", "ge, gt"]),
])
def test_constraint_errors_name_the_field(field: dict[str, Any], pieces: list[str]) -> None:
    e = err({"outputs": {"x": field}})
    for piece in pieces:
        assert piece in e.message, (piece, e.message)
    assert e.details["field"] == "x" and e.details["section"] == "outputs" and e.status_code == 422


def test_reasonable_patterns_pass() -> None:
    for pattern in ("^[^@\\s]+@[^@\\s]+$", "^\\d{3}-\\d{4}$", "^[a-z]{1,50}@[a-z]{1,50}\\.[a-z]{2,10}$", "[]x]{3}"):
        parse_signature({"outputs": {"x": {"type": "str", "pattern": pattern}}})


def test_direct_construction_checks_constraints() -> None:
    with pytest.raises(SignatureError, match="needs a string type"):
        Field("x", TypeSpec("int"), constraints=Constraints(pattern="a"))
    assert not Constraints() and Constraints(ge=1)
    assert Field("x", TypeSpec("int"), constraints=Constraints(ge=1)).to_dict() == {"type": "int", "ge": 1}


def test_round_trip_keeps_constraints_and_str_keeps_types() -> None:
    spec = {"instructions": "Rate.", "inputs": {"t": {"type": "str", "desc": "text", "min_length": 1}},
            "outputs": {"stars": {"type": "int", "ge": 1, "le": 5}, "why": {"type": "str", "pattern": "^W"}}}
    sig = parse_signature(spec)
    assert parse_signature(sig.to_dict()) == sig
    assert sig != parse_signature({**spec, "outputs": {**spec["outputs"], "stars": {"type": "int", "ge": 1}}})
    typed = parse_signature(
        "q: tuple[int, ...] -> a: Union[int, str, None], b: dict[str, list[Optional[Tuple[int, str]]]]"
    )
    assert parse_signature(str(typed)) == typed and parse_signature(typed.to_dict()) == typed


# --- budgets -----------------------------------------------------------------------------------------------


def too_complex(spec: Any) -> SchemaTooComplexError:
    sig = parse_signature(spec)  # parsing builds no schema; the budget is checked before the schema is used
    with pytest.raises(SchemaTooComplexError) as info:
        sig.output_json_schema()
    with pytest.raises(SchemaTooComplexError):
        response_format(sig)
    e = info.value
    assert e.status_code == 422 and e.body()["type"] == "schema_too_complex"
    return e


def test_union_width_budget() -> None:
    members = ["int", "str", "float", "bool", "list[str]", "list[int]", "dict[str, int]", "tuple[int, str]"]
    assert len(members) == MAX_UNION_WIDTH
    parse_signature("q -> a: " + " | ".join(members)).check_budget()
    e = too_complex("q -> a: Optional[" + " | ".join(members) + "]")
    assert e.details == {"limit": "MAX_UNION_WIDTH", "max": MAX_UNION_WIDTH, "value": MAX_UNION_WIDTH + 1}
    assert f"9 branches; the limit (MAX_UNION_WIDTH) is {MAX_UNION_WIDTH}" in e.message


def test_depth_budget_follows_refs() -> None:
    # each type: an object (1) whose property (2) is a list (3) of the next type; five lists of
    # objects in a chain, under the root: past MAX_SCHEMA_DEPTH only through the $refs
    types = {"A": {"b": "list[list[list[B]]]"}, "B": {"c": "list[list[list[C]]]"}, "C": {"d": "list[list[D]]"},
             "D": {"x": "list[list[int]]"}}
    e = too_complex({"types": types, "outputs": {"a": "list[list[A]]"}})
    assert e.details["limit"] == "MAX_SCHEMA_DEPTH" and e.details["max"] == MAX_SCHEMA_DEPTH
    assert e.details["value"] > MAX_SCHEMA_DEPTH and f"nests {e.details['value']} levels deep" in e.message
    parse_signature({"types": types, "outputs": {"a": "A"}}).check_budget()


def test_size_budget() -> None:
    desc = "d" * 4_000
    fields = {f"f{i}": {"type": "str", "desc": desc} for i in range(MAX_SCHEMA_BYTES // 4_000 + 1)}
    e = too_complex({"outputs": fields})
    assert e.details["limit"] == "MAX_SCHEMA_BYTES" and e.details["value"] > MAX_SCHEMA_BYTES
    assert f"the limit (MAX_SCHEMA_BYTES) is {MAX_SCHEMA_BYTES}" in e.message
    half = dict(list(fields.items())[: len(fields) // 2])
    parse_signature({"outputs": half}).check_budget()


def test_chain_of_thought_signature_is_budgeted_too() -> None:
    sig = parse_signature("q -> a: int | str")
    sig.with_reasoning().check_budget()


# --- byte-identical schemas ------------------------------------------------------------------------------


def fmt_bytes(spec: Any) -> str:
    return json.dumps(response_format(parse_signature(spec)))


def test_identical_signatures_give_byte_identical_schemas() -> None:
    text = "q: str -> a: Union[int, str], b: tuple[int, ...], c: dict[str, list[Optional[Tuple[int, str]]]], d: Any"
    json_form = {"inputs": {"q": "str"}, "outputs": {
        "a": "int | str", "b": "Tuple[int, ...]", "c": "Dict[str, List[Tuple[int, str] | None]]", "d": "Any"}}
    first = fmt_bytes(text)
    assert fmt_bytes(text) == first
    assert fmt_bytes(json_form) == first
    assert fmt_bytes(parse_signature(text).to_dict()) == first
    assert fmt_bytes(str(parse_signature(json_form))) == first
    other = "q -> a: str | int, b: tuple[int, ...], c: dict[str, list[Optional[tuple[int, str]]]], d: Any"
    assert fmt_bytes(other) != first  # a union's order is its anyOf order


def test_object_type_schemas_do_not_depend_on_declaration_order_or_unused_types() -> None:
    contact = {"name": "str", "email": {"type": "Optional[str]", "pattern": "@"}}
    org = {"name": "str", "people": "list[Contact]"}
    a = {"types": {"Contact": contact, "Org": org}, "outputs": {"org": "Org", "lead": "Contact"}}
    b = {"types": {"Unused": {"x": "int"}, "Org": org, "Contact": dict(contact)},
         "outputs": {"org": "Org", "lead": "Contact"}}
    assert fmt_bytes(a) == fmt_bytes(b) == fmt_bytes(json.loads(json.dumps(a)))
    assert parse_signature(a) == parse_signature(b)


def test_equal_number_bounds_give_one_schema_whatever_came_first() -> None:
    """``ge: 1.0`` and ``ge: 1`` make equal signatures (they key the same caches), so they must make the
    same bytes; before, the schema was whichever of the two was built first in the process."""
    float_first = fmt_bytes({"outputs": {"bound_order": {"type": "float", "ge": 1.0, "le": -0.0 + 5}}})
    int_then = fmt_bytes({"outputs": {"bound_order": {"type": "float", "ge": 1, "le": 5}}})
    assert float_first == int_then
    bounds = json.loads(int_then)["json_schema"]["schema"]["properties"]["bound_order"]
    assert [(bounds[k], type(bounds[k])) for k in ("minimum", "maximum")] == [(1, int), (5, int)]
    zero = fmt_bytes({"outputs": {"bound_zero": {"type": "float", "gt": -0.0}}})
    assert zero == fmt_bytes({"outputs": {"bound_zero": {"type": "float", "gt": 0}}})
    assert '"exclusiveMinimum": 0}' in zero and "-0" not in zero


def test_descriptions_for_the_prompt() -> None:
    assert Constraints(ge=1, le=5).describe() == "at least 1, at most 5"
    assert Constraints(min_length=1, max_items=3, pattern="^a$").describe() == (
        "at least 1 character, matching the pattern ^a$, at most 3 items")
    assert Constraints().describe() is None
    sig = parse_signature({"types": {"C": {"n": {"type": "int", "ge": 0, "desc": "count"}, "t": "list[str]"}},
                           "outputs": {"c": "C"}})
    assert sig.describe_types() == (
        "The object types above are JSON objects with exactly these keys:\n`C`:\n"
        "  - `n` (int; at least 0): count\n  - `t` (list[str])"
    )
    assert parse_signature("q -> a").describe_types() is None


# --- what pydantic would refuse later, as a 500 ----------------------------------------------------


@pytest.mark.parametrize(("field", "piece"), [
    ({"type": "int", "ge": 1.5}, "constraint 'ge' must be a whole number for an int field"),
    ({"type": "Optional[int]", "lt": 0.5}, "constraint 'lt' must be a whole number for an int field"),
    ({"type": "float", "le": 10**400}, "constraint 'le' is out of range"),
    ({"type": "int", "ge": -(10**400)}, "constraint 'ge' is out of range"),
])
def test_number_constraints_that_do_not_fit_the_number_type_are_a_422(field: dict[str, Any], piece: str) -> None:
    for section in ("outputs", "inputs"):
        spec = {section: {"x": field}, **({"outputs": {"y": "int"}} if section == "inputs" else {})}
        e = err(spec)
        assert piece in e.message and e.details["field"] == "x"
    sig = parse_signature({"outputs": {"x": {"type": "int", "ge": 1.0, "le": 10**300}}})  # whole: fine
    assert sig.parse_outputs('{"x": 3}') == {"x": 3}
    with pytest.raises(OutputValidationError, match="less than or equal to"):
        sig.parse_outputs('{"x": ' + "9" * 301 + "}")


@pytest.mark.parametrize("spec", [
    {"outputs": {"x": {"type": "int", "desc": "bad \ud800 text"}}},
    {"instructions": "bad \udc00", "outputs": {"x": "int"}},
    {"outputs": {"x": {"type": "str", "pattern": "^\ud800$"}}},
    {"outputs": {"x": "Literal['\\ud800']"}},
    {"outputs": {"x": "Literal['\ud800']"}},
    {"types": {"A": {"y": {"type": "int", "desc": "\ud800"}}}, "outputs": {"x": "A"}},
])
def test_text_that_is_not_unicode_is_a_422(spec: dict[str, Any]) -> None:
    """A lone surrogate (JSON may spell one: "\\ud800") cannot be encoded in UTF-8: refused when parsed,
    not a 500 when the schema is measured or the validator built."""
    e = err(spec)
    assert "lone surrogate" in e.message and e.status_code == 422
