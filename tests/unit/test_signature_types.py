"""DSPy's full type syntax: unions, tuples, Any, nesting; and the JSON form's object types."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.errors import InvalidRequestError, OutputValidationError, SignatureError
from app.services.signature import (
    MAX_OBJECT_DEPTH,
    MAX_OBJECT_TYPES,
    Field,
    ObjectType,
    Signature,
    TypeSpec,
    parse_signature,
    parse_type,
)


def err(spec: Any) -> SignatureError:
    with pytest.raises(SignatureError) as info:
        parse_signature(spec)
    return info.value


def out(sig: str | dict[str, Any], reply: dict[str, Any]) -> dict[str, Any]:
    return parse_signature(sig).parse_outputs(json.dumps(reply))


def bad_output(sig: str | dict[str, Any], reply: dict[str, Any]) -> OutputValidationError:
    with pytest.raises(OutputValidationError) as info:
        out(sig, reply)
    return info.value


# --- unions ---------------------------------------------------------------------------------


def test_union_spellings_mean_the_same() -> None:
    a = parse_type("Union[int, str]")
    assert parse_type("int | str") == a
    assert parse_type("Union[int, Union[str]]") == a
    assert parse_type("Union[int, str, int]") == a  # duplicates go, as in Python
    assert parse_type("str | int") != a  # order is kept: it is the schema's anyOf order
    assert parse_type("Union[int, str, None]") == parse_type("Optional[int | str]") == parse_type("int | None | str")
    assert parse_type("Optional[Union[int, Optional[str]]]") == parse_type("Optional[int | str]")


def test_union_schema_is_one_flat_anyof() -> None:
    sig = parse_signature("q -> a: int | str, b: Union[int, str, None], c: list[Optional[float | bool]]")
    p = sig.output_json_schema()
    assert p["properties"]["a"] == {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert p["properties"]["b"] == {"anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}]}
    assert p["properties"]["c"]["items"] == {"anyOf": [{"type": "number"}, {"type": "boolean"}, {"type": "null"}]}


def test_union_order_survives_typing_caches() -> None:
    # typing caches Optional[X] by equality, and Union[int, str] == Union[str, int]
    for text in ("Optional[int | str]", "Optional[str | int]", "Optional[int | str]"):
        first = text[9:12]
        schema = parse_signature(f"q -> a: {text}").output_json_schema()["properties"]["a"]
        assert schema["anyOf"][0]["type"] == {"int": "integer", "str": "string"}[first]


def test_union_order_survives_typing_caches_inside_containers_of_a_union() -> None:
    """``list[Union[int, str, None]] == list[Union[str, int, None]]``, so an outer union holding one came
    back from typing's cache with the other order when a signature had built it first."""
    for outer in ("list[{}] | bool", "dict[str, {}] | bool", "tuple[{}, bool] | bool"):
        for inner, first in (("Optional[int | str]", "integer"), ("Optional[str | int]", "string"),
                             ("int | str | None", "integer")):
            schema = parse_signature("q -> a: " + outer.format(inner)).output_json_schema()["properties"]["a"]
            branch = schema["anyOf"][0]
            item = (branch.get("items") or branch.get("additionalProperties") or {}) if "prefixItems" not in branch \
                else branch["prefixItems"][0]
            assert item["anyOf"][0]["type"] == first, (outer, inner, schema)


def test_smart_union_keeps_the_exact_type() -> None:
    sig = "q -> a: int | str, b: str | int, c: float | int, d: int | float"
    assert out(sig, {"a": "3", "b": 3, "c": 3, "d": 2.5}) == {"a": "3", "b": 3, "c": 3, "d": 2.5}
    got = out(sig, {"a": 3, "b": "3", "c": 2.5, "d": 3})
    assert got == {"a": 3, "b": "3", "c": 2.5, "d": 3}
    assert type(got["a"]) is int and type(got["d"]) is int and type(got["c"]) is float


def test_bool_is_never_a_number_inside_unions() -> None:
    e = bad_output("q -> a: int | float", {"a": True})
    assert e.details["errors"] == [{"loc": ["a"], "msg": "Input should be int | float", "type": "union_type"}]
    e = bad_output("q -> a: list[Optional[str | int]]", {"a": [1, 2.5]})
    assert e.details["errors"] == [{"loc": ["a", 1], "msg": "Input should be str | int | None", "type": "union_type"}]
    assert out("q -> a: int | bool", {"a": True}) == {"a": True}
    assert out("q -> a: bool | int", {"a": 1}) == {"a": 1}
    assert out("q -> a: Optional[float | str]", {"a": None}) == {"a": None}
    with pytest.raises(InvalidRequestError):
        parse_signature("n: int | None -> a").validate_inputs({"n": False})


def test_union_of_containers_validates_each_shape() -> None:
    sig = "q -> a: Union[list[str], dict[str, Any]]"
    assert out(sig, {"a": ["x"]}) == {"a": ["x"]}
    assert out(sig, {"a": {"k": [1, {"z": None}]}}) == {"a": {"k": [1, {"z": None}]}}
    bad_output(sig, {"a": "x"})


# --- tuples, Any ------------------------------------------------------------------------------------


def test_fixed_tuple_schema_and_validation() -> None:
    sig = "q -> t: tuple[int, str]"
    assert parse_signature(sig).output_json_schema()["properties"]["t"] == {
        "type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "minItems": 2, "maxItems": 2,
    }
    got = out(sig, {"t": [1, "x"]})
    assert got == {"t": (1, "x")} and type(got["t"]) is tuple
    for wrong in ([1], [1, "x", 2], ["x", 1], [True, "x"], {"0": 1}):
        bad_output(sig, {"t": wrong})


def test_variadic_tuple_is_an_array_validated_as_a_tuple() -> None:
    sig = "q -> t: Tuple[float, ...]"
    schema = parse_signature(sig).output_json_schema()
    assert schema["properties"]["t"] == {"type": "array", "items": {"type": "number"}}
    assert out(sig, {"t": []}) == {"t": ()}
    assert out(sig, {"t": [1, 2.5]}) == {"t": (1.0, 2.5)}
    bad_output(sig, {"t": [1, "x"]})


def test_any_takes_any_json_value() -> None:
    sig = parse_signature("x: Any -> a: Any, b: list[Any]")
    assert sig.output_json_schema()["properties"]["a"] == {}
    for value in (None, 1, "s", [1, {"a": None}], {"k": True}):
        assert sig.parse_outputs(json.dumps({"a": value, "b": [value]})) == {"a": value, "b": [value]}
        assert sig.validate_inputs({"x": value}) == {"x": value}


def test_nested_issue_examples_validate() -> None:
    sig = "q -> a: dict[str, list[Optional[Tuple[int, str]]]]"
    assert out(sig, {"a": {"k": [None, [1, "x"]]}}) == {"a": {"k": [None, (1, "x")]}}
    e = bad_output(sig, {"a": {"k": [[1, 2]]}})
    assert any(x["loc"][:3] == ["a", "k", 0] for x in e.details["errors"]), e.details["errors"]


def test_tuple_inputs_are_validated_and_returned_as_json_arrays_by_dump() -> None:
    sig = parse_signature("pair: tuple[str, int] -> a")
    assert sig.validate_inputs({"pair": ["x", "2"]}) == {"pair": ("x", 2)}
    with pytest.raises(InvalidRequestError):
        sig.validate_inputs({"pair": ["x"]})


# --- object types ----------------------------------------------------------------------------------

CONTACT = {
    "types": {"Contact": {"name": "str", "email": {"type": "Optional[str]", "desc": "if given"}}},
    "inputs": {"text": "str"},
    "outputs": {"contacts": "list[Contact]", "best": "Optional[Contact]"},
}


def test_object_type_schema_uses_defs_and_refs() -> None:
    sig = parse_signature(CONTACT)
    assert str(sig) == "text: str -> contacts: list[Contact], best: Optional[Contact]"
    schema = sig.output_json_schema()
    assert schema["properties"] == {
        "contacts": {"type": "array", "items": {"$ref": "#/$defs/Contact"}},
        "best": {"anyOf": [{"$ref": "#/$defs/Contact"}, {"type": "null"}]},
    }
    assert schema["$defs"] == {"Contact": {
        "type": "object",
        "properties": {"name": {"type": "string"},
                       "email": {"anyOf": [{"type": "string"}, {"type": "null"}], "description": "if given"}},
        "required": ["name", "email"], "additionalProperties": False,
    }}


def test_object_values_are_plain_dicts() -> None:
    got = out(CONTACT, {"contacts": [{"name": "Ada", "email": "a@x", "extra": 1}, {"name": "Alan"}], "best": None})
    assert got == {"contacts": [{"name": "Ada", "email": "a@x"}, {"name": "Alan", "email": None}], "best": None}
    assert type(got["contacts"][0]) is dict
    e = bad_output(CONTACT, {"contacts": [{"email": "a@x"}], "best": None})
    assert e.details["errors"][0]["loc"] == ["contacts", 0, "name"]


def test_object_inputs_refuse_unknown_keys() -> None:
    sig = parse_signature({**CONTACT, "inputs": {"who": "Contact"}})
    assert sig.validate_inputs({"who": {"name": "Ada"}}) == {"who": {"name": "Ada", "email": None}}
    with pytest.raises(InvalidRequestError, match="who.nmae"):
        sig.validate_inputs({"who": {"name": "Ada", "nmae": "x"}})


def test_types_may_use_types_in_any_order() -> None:
    spec = {"types": {"Org": {"name": "str", "people": "list[Person]", "hq": "Optional[Address]"},
                      "Person": {"name": "str", "home": "Address"}, "Address": {"city": "str"}},
            "outputs": {"org": "Org"}}
    sig = parse_signature(spec)
    assert [o.name for o in sig.object_types] == ["Org", "Person", "Address"]
    assert set(sig.output_json_schema()["$defs"]) == {"Org", "Person", "Address"}
    reply = {"org": {"name": "O", "people": [{"name": "P", "home": {"city": "C"}}], "hq": None}}
    assert out(spec, reply) == reply


def test_to_dict_round_trips_types_and_drops_unused_ones() -> None:
    spec = {**CONTACT, "types": {**CONTACT["types"], "Unused": {"x": "int"}}}
    sig = parse_signature(spec)
    d = sig.to_dict()
    assert list(d["types"]) == ["Contact"]
    assert parse_signature(d) == sig
    assert parse_signature(json.loads(json.dumps(d))) == sig


def test_equality_goes_by_the_definition_not_the_name() -> None:
    a = parse_signature({"types": {"C": {"x": "int"}}, "outputs": {"c": "C"}})
    b = parse_signature({"types": {"C": {"x": "str"}}, "outputs": {"c": "C"}})
    assert str(a) == str(b) and a != b and hash(a.outputs[0].type) != hash(b.outputs[0].type)
    assert a.output_json_schema() != b.output_json_schema()  # the schema cache keys on the definition
    assert b.parse_outputs('{"c": {"x": "s"}}') == {"c": {"x": "s"}}
    with pytest.raises(OutputValidationError):
        a.parse_outputs('{"c": {"x": "s"}}')


@pytest.mark.parametrize(("types", "outputs", "pieces", "type_name"), [
    ({}, {"c": "Contact"}, ["unknown type 'Contact' for field 'c'"], None),
    ({"A": {"b": "list[Nope]"}}, {"a": "A"}, ["unknown type 'Nope' for field 'b'", "in object type 'A'"], "A"),
    ({"A": {"a": "Optional[A]"}}, {"a": "A"}, ["object type 'A' contains itself: A -> A"], "A"),
    ({"A": {"b": "B"}, "B": {"a": "list[A]"}}, {"a": "A"}, ["contains itself: A -> B -> A"], "A"),
    ({"str": {"x": "int"}}, {"a": "int"}, ["type name 'str'", "shadow"], "str"),
    ({"Any": {"x": "int"}}, {"a": "int"}, ["shadow"], "Any"),
    ({"object": {"x": "int"}}, {"a": "int"}, ["shadow"], "object"),
    ({"None": {"x": "int"}}, {"a": "int"}, ["Python keyword"], "None"),
    ({"true": {"x": "int"}}, {"a": "int"}, ["shadow"], "true"),
    ({"class": {"x": "int"}}, {"a": "int"}, ["Python keyword"], "class"),
    ({"a-b": {"x": "int"}}, {"a": "int"}, ["invalid type name 'a-b'"], "a-b"),
    ({"E": {}}, {"a": "E"}, ["object type 'E' has no fields"], "E"),
    ({"E": "str"}, {"a": "E"}, ["object type 'E' must be an object"], "E"),
    ({"E": {"x": {"type": "int", "pattern": "a"}}}, {"a": "E"}, ["constraint 'pattern'", "for field 'x'", "'E'"], "E"),
    ({"E": {"x": "int"}}, {"a": "E[int]"}, ["object type 'E' takes no arguments"], None),
])
def test_object_type_errors_name_the_type(types: Any, outputs: Any, pieces: list[str], type_name: str | None) -> None:
    e = err({"types": types, "outputs": outputs})
    for piece in pieces:
        assert piece in e.message, (piece, e.message)
    assert e.details.get("type_name") == type_name, e.details
    assert e.status_code == 422 and e.type == "invalid_signature"


def test_object_nesting_is_bounded() -> None:
    names = [f"T{i}" for i in range(MAX_OBJECT_DEPTH + 1)]
    types = {n: {"next": f"Optional[{names[i + 1]}]"} for i, n in enumerate(names[:-1])}
    types[names[-1]] = {"x": "int"}
    e = err({"types": types, "outputs": {"a": "T0"}})
    assert "nests object types too deeply" in e.message and "T0 -> T1" in e.message
    assert f"max {MAX_OBJECT_DEPTH}" in e.message and e.details["type_name"] == "T0"
    del types[names[0]]  # one level less fits
    assert parse_signature({"types": types, "outputs": {"a": "T1"}}).object_types[0].depth == MAX_OBJECT_DEPTH
    # built bottom-up (a type used before by another) the depth is checked all the same
    deep = {n: {"next": f"Optional[{names[i + 1]}]"} for i, n in enumerate(names[:-1])}
    deep = {names[-1]: {"x": "int"}, **dict(reversed(list(deep.items())))}
    assert "deep" in err({"types": deep, "outputs": {"a": "int"}}).message


def test_type_count_and_section_shape_are_checked() -> None:
    many = {f"T{i}": {"x": "int"} for i in range(MAX_OBJECT_TYPES + 1)}
    assert "too many object types" in err({"types": many, "outputs": {"a": "int"}}).message
    assert "'types' must be an object" in err({"types": ["Contact"], "outputs": {"a": "int"}}).message


def test_the_json_form_is_bounded_as_a_whole_not_only_per_section() -> None:
    """Each object type may have MAX_FIELDS fields of MAX_TYPE_CHARS each: 32 of them made a signature
    that took the event loop ~40 s to parse and build before its schema was refused. Totals bound it."""
    many = {f"T{t}": {f"f{i}": "Optional[int]" for i in range(100)} for t in range(5)}
    e = err({"types": many, "outputs": {f"o{t}": f"T{t}" for t in range(5)}})
    assert e.details["limit"] == "MAX_TOTAL_FIELDS" and e.details["max"] == 400 and e.status_code == 422
    long = "Union[" + ", ".join(f"Literal['{i:04}']" for i in range(50)) + ", int]"
    wide = {f"T{t}": {f"f{i}": long for i in range(25)} for t in range(5)}
    e = err({"types": wide, "outputs": {f"o{t}": f"T{t}" for t in range(5)}})
    assert e.details["limit"] == "MAX_TOTAL_TYPE_CHARS" and "more than 100000 characters" in e.message
    fits = {f"T{t}": {f"f{i}": "int" for i in range(90)} for t in range(4)}
    assert len(parse_signature({"types": fits, "outputs": {f"o{t}": f"T{t}" for t in range(4)}}).object_types) == 4


def test_direct_construction_of_object_types() -> None:
    contact = ObjectType("Contact", (Field("name"), Field("age", TypeSpec.optional(TypeSpec("int")))))
    spec = TypeSpec.of_object(contact)
    assert str(TypeSpec.list_of(spec)) == "list[Contact]"
    assert TypeSpec.list_of(spec).objects() == (contact,)
    with pytest.raises(SignatureError, match="duplicate field"):
        ObjectType("C", (Field("a"), Field("a")))
    with pytest.raises(SignatureError, match="shadow"):
        ObjectType("list", (Field("a"),))
    with pytest.raises(SignatureError, match="Optional or unions"):
        TypeSpec("union", (TypeSpec("int"), TypeSpec.optional(TypeSpec("str"))))
    with pytest.raises(SignatureError, match="duplicate union member"):
        TypeSpec("union", (TypeSpec("int"), TypeSpec("int")))
    assert TypeSpec.union(TypeSpec("int"), None) == TypeSpec.optional(TypeSpec("int"))
    assert str(TypeSpec.tuple_of(TypeSpec("int"), ...)) == "tuple[int, ...]"  # type: ignore[arg-type]


def test_one_name_one_definition() -> None:
    a = ObjectType("C", (Field("x", TypeSpec("int")),))
    b = ObjectType("C", (Field("x", TypeSpec("str")),))
    with pytest.raises(SignatureError, match="two different object types are named 'C'"):
        Signature(outputs=(Field("a", TypeSpec.of_object(a)), Field("b", TypeSpec.of_object(b))))
    same = ObjectType("C", (Field("x", TypeSpec("int")),))
    sig = Signature(outputs=(Field("a", TypeSpec.of_object(a)), Field("b", TypeSpec.list_of(TypeSpec.of_object(same)))))
    assert list(sig.output_json_schema()["$defs"]) == ["C"]
