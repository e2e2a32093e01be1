"""Signature parsing: the string and JSON forms, their errors and checks, the model's invariants."""

from __future__ import annotations

import json
from typing import Any, Literal, Optional, Union

import pytest

from app.errors import SignatureError
from app.services.signature import (
    ALLOWED_TYPES,
    MAX_FIELDS,
    MAX_SIGNATURE_CHARS,
    REASONING_FIELD,
    Field,
    Signature,
    TypeSpec,
    parse_signature,
    parse_signature_cached,
    parse_type,
)


def err(spec: Any, **kw: Any) -> SignatureError:
    with pytest.raises(SignatureError) as info:
        parse_signature(spec, **kw)
    return info.value


# --- string form ----------------------------------------------------------------


def test_simple_string_form_defaults_to_str() -> None:
    sig = parse_signature("question -> answer")
    assert sig.input_names == ("question",)
    assert sig.output_names == ("answer",)
    assert sig.inputs[0] == Field("question", TypeSpec("str"))
    assert sig.instructions is None
    assert str(sig) == "question: str -> answer: str"


def test_typed_string_form_keeps_order_and_types() -> None:
    sig = parse_signature("context: list[str], question: str -> answer: str, confidence: float")
    assert [(f.name, str(f.type)) for f in sig.inputs] == [("context", "list[str]"), ("question", "str")]
    assert [(f.name, str(f.type)) for f in sig.outputs] == [("answer", "str"), ("confidence", "float")]
    assert str(sig) == "context: list[str], question: str -> answer: str, confidence: float"


def test_whitespace_and_newlines_are_insignificant() -> None:
    a = parse_signature("  context :list[ str ] ,\n question->answer  :  int ")
    assert str(a) == "context: list[str], question: str -> answer: int"


def test_no_inputs_is_allowed() -> None:
    sig = parse_signature("-> joke")
    assert sig.inputs == ()
    assert str(sig) == "-> joke: str"
    assert parse_signature(str(sig)) == sig


def test_instructions_are_separate_and_stripped() -> None:
    sig = parse_signature("q -> a", "  Answer briefly.  ")
    assert sig.instructions == "Answer briefly."
    assert parse_signature("q -> a", "   ").instructions is None


@pytest.mark.parametrize(
    ("text", "canonical", "annotation"),
    [
        ("str", "str", str),
        ("int", "int", int),
        ("float", "float", float),
        ("bool", "bool", bool),
        ("list[int]", "list[int]", list[int]),
        ("List[str]", "list[str]", list[str]),
        ("dict[str, float]", "dict[str, float]", dict[str, float]),
        ("Dict[str, bool]", "dict[str, bool]", dict[str, bool]),
        ("Optional[int]", "Optional[int]", Optional[int]),  # noqa: UP007
        ("optional[str]", "Optional[str]", Optional[str]),  # noqa: UP007
        ("int | None", "Optional[int]", Optional[int]),  # noqa: UP007
        ("None | list[str]", "Optional[list[str]]", Optional[list[str]]),  # noqa: UP007
        ("Optional[Optional[int]]", "Optional[int]", Optional[int]),  # noqa: UP007
        ("Optional[int] | None", "Optional[int]", Optional[int]),  # noqa: UP007
        ("Literal['pos', 'neg']", 'Literal["pos", "neg"]', Literal["pos", "neg"]),
        (
            'Literal["a", 1, -2.5, true, False]',
            'Literal["a", 1, -2.5, True, False]',
            Literal["a", 1, -2.5, True, False],
        ),
        ("Literal[1e3]", "Literal[1000.0]", Literal[1000.0]),
        (
            "dict[str, list[Optional[Literal['x', 2]]]]",
            'dict[str, list[Optional[Literal["x", 2]]]]',
            dict[str, list[Optional[Literal["x", 2]]]],  # noqa: UP007
        ),
        ("list[list[list[list[list[str]]]]]", "list[list[list[list[list[str]]]]]", list[list[list[list[list[str]]]]]),
        ("Any", "Any", Any),
        ("tuple[int, str]", "tuple[int, str]", tuple[int, str]),
        ("Tuple[int]", "tuple[int]", tuple[int]),
        ("tuple[int, ...]", "tuple[int, ...]", tuple[int, ...]),
        ("Tuple[ Optional[str] , ... ]", "tuple[Optional[str], ...]", tuple[Optional[str], ...]),  # noqa: UP007
        ("Union[int, str]", "int | str", Union[int, str]),  # noqa: UP007
        ("int | str", "int | str", Union[int, str]),  # noqa: UP007
        ("str | int", "str | int", Union[str, int]),  # noqa: UP007
        ("Union[int, str, None]", "Optional[int | str]", Optional[Union[int, str]]),  # noqa: UP007
        ("Union[int, Optional[str]]", "Optional[int | str]", Optional[Union[int, str]]),  # noqa: UP007
        ("Optional[int | str]", "Optional[int | str]", Optional[Union[int, str]]),  # noqa: UP007
        ("Union[int, Union[str, float]]", "int | str | float", Union[int, str, float]),  # noqa: UP007
        ("Union[int, int]", "int", int),  # noqa: UP007
        ("Union[int]", "int", int),  # noqa: UP007
        ("Union[list[str], dict[str, Any]]", "list[str] | dict[str, Any]", Union[list[str], dict[str, Any]]),  # noqa: UP007
        (
            "dict[str, list[Optional[Tuple[int, str]]]]",
            "dict[str, list[Optional[tuple[int, str]]]]",
            dict[str, list[Optional[tuple[int, str]]]],  # noqa: UP007
        ),
        ("List[Dict[str, Any]]", "list[dict[str, Any]]", list[dict[str, Any]]),
        ("Optional[Any]", "Optional[Any]", Optional[Any]),  # noqa: UP007
        ("tuple[int | None, Literal['a']]", 'tuple[Optional[int], Literal["a"]]', tuple[Optional[int], Literal["a"]]),  # noqa: UP007
    ],
)
def test_every_whitelisted_type(text: str, canonical: str, annotation: Any) -> None:
    spec = parse_type(text)
    assert str(spec) == canonical
    assert spec.to_annotation() == annotation
    assert parse_type(canonical) == spec  # canonical text round-trips
    sig = parse_signature(f"x: {text} -> y: {text}")
    assert sig.inputs[0].type == spec
    assert parse_signature(str(sig)) == sig


def test_literal_string_escapes_decode_exactly() -> None:
    spec = parse_type("""Literal['it\\'s', "say \\"hi\\"", 'tab\\there', "é", 'a"b', '\\u00e8', "{x}"]""")
    assert spec.args == ("it's", 'say "hi"', "tab\there", "é", 'a"b', "è", "{x}")
    assert parse_type(str(spec)) == spec


def test_literal_equality_keeps_bools_and_numbers_apart() -> None:
    assert parse_type("Literal[1]") != parse_type("Literal[True]")
    assert len({parse_type("Literal[1]"), parse_type("Literal[True]"), parse_type("Literal[1.0]")}) == 3
    assert parse_type("Literal[1, True]").args == (1, True)


# --- JSON form --------------------------------------------------------------------


JSON_SPEC = {
    "instructions": "Answer from the context.",
    "inputs": {
        "context": {"type": "list[str]", "desc": "Relevant passages."},
        "question": "str",
    },
    "outputs": {
        "answer": {"desc": "Often 1-5 words."},
        "confidence": {"type": "float", "description": "0 to 1"},
    },
}


def test_json_form() -> None:
    sig = parse_signature(JSON_SPEC)
    assert sig.instructions == "Answer from the context."
    assert sig.inputs == (
        Field("context", TypeSpec.list_of(TypeSpec("str")), "Relevant passages."),
        Field("question", TypeSpec("str")),
    )
    assert sig.outputs == (
        Field("answer", TypeSpec("str"), "Often 1-5 words."),
        Field("confidence", TypeSpec("float"), "0 to 1"),
    )
    assert str(sig) == "context: list[str], question: str -> answer: str, confidence: float"


def test_json_form_keeps_field_order() -> None:
    sig = parse_signature({"inputs": {"z": "str", "a": "int"}, "outputs": {"m": "str", "b": "bool"}})
    assert sig.input_names == ("z", "a")
    assert sig.output_names == ("m", "b")


def test_explicit_instructions_override_json_form() -> None:
    assert parse_signature(JSON_SPEC, "Be terse.").instructions == "Be terse."
    assert parse_signature(JSON_SPEC).instructions == "Answer from the context."


def test_to_dict_round_trips() -> None:
    sig = parse_signature(JSON_SPEC)
    d = sig.to_dict()
    assert d == {
        "instructions": "Answer from the context.",
        "inputs": {"context": {"type": "list[str]", "desc": "Relevant passages."}, "question": {"type": "str"}},
        "outputs": {
            "answer": {"type": "str", "desc": "Often 1-5 words."},
            "confidence": {"type": "float", "desc": "0 to 1"},
        },
    }
    assert json.loads(json.dumps(d)) == d
    assert parse_signature(d) == sig


def test_parse_signature_accepts_a_signature() -> None:
    sig = parse_signature("q -> a")
    assert parse_signature(sig) is sig
    assert parse_signature(sig, "Hi").instructions == "Hi"


# --- errors: string form ------------------------------------------------------------

ALLOWED = f"allowed: {ALLOWED_TYPES}"


def test_unknown_type_names_field_column_and_whitelist() -> None:
    e = err("question: str, x: set -> answer")
    assert e.message == f"unknown type 'set' for field 'x' at column 19; {ALLOWED}"
    assert e.details == {"field": "x", "position": 19}
    assert e.status_code == 422
    assert e.body()["type"] == "invalid_signature"


@pytest.mark.parametrize(
    ("spec", "pieces", "details"),
    [
        ("question answer", ["missing '->'"], {"position": 16}),
        ("question ->", ["no output fields"], {}),
        ("question -> ", ["no output fields"], {}),
        ("q, q -> a", ["duplicate field 'q' at column 4"], {"field": "q", "position": 4}),
        ("q -> a, q", ["duplicate field 'q' at column 9"], {"field": "q", "position": 9}),
        ("q -> a -> b", ["more than one '->' at column 8"], {"position": 8}),
        ("a b -> c", ["expected ',' or '->' after field 'a' at column 3, found 'b'"], {"field": "a"}),
        ("a -> b c", ["expected ',' or end of input after field 'b' at column 8, found 'c'"], {"field": "b"}),
        (", -> a", ["expected a field name at column 1, found ','"], {"position": 1}),
        ("q, -> a", ["expected a field name at column 4, found '->'"], {}),
        ("1q -> a", ["expected a field name at column 1, found '1'"], {}),
        ("class -> a", ["'class'", "Python keyword", "column 1"], {"field": "class"}),
        ("q -> None", ["'None'", "Python keyword"], {"field": "None"}),
        ("q-x -> a", ["unexpected character '-' for field 'q' at column 2"], {"field": "q", "position": 2}),
        ("q$ -> a", ["unexpected character '$'", "column 2"], {"field": "q"}),
        ("q: -> a", ["expected a type for field 'q' at column 4, found '->'"], {"field": "q"}),
        ("q: list -> a", ["'list' needs type arguments for field 'q' at column 4", "list[str]"], {"field": "q"}),
        ("q: dict -> a", ["'dict' needs type arguments"], {"field": "q"}),
        ("q: Literal -> a", ["'Literal' needs type arguments"], {"field": "q"}),
        ("q: str[int] -> a", ["type 'str' takes no arguments for field 'q' at column 7"], {"field": "q"}),
        ("q: list[str -> a", ["expected ']' to close 'list[' for field 'q' at column 13, found '->'"], {}),
        ("q: list[str, int] -> a", ["expected ']' to close 'list['", "found ','"], {"field": "q"}),
        ("q: dict[int, str] -> a", ["dict keys must be str, not 'int' for field 'q' at column 9"], {"position": 9}),
        ("q: dict[str] -> a", ["expected ',' and a value type", "found ']'"], {"field": "q"}),
        ("q: str | set -> a", ["unknown type 'set' for field 'q' at column 10"], {"field": "q", "position": 10}),
        ("q: tuple -> a", ["'tuple' needs type arguments", "tuple[int, ...]"], {"field": "q"}),
        ("q: tuple[] -> a", ["expected a type", "found ']'"], {"field": "q"}),
        ("q: tuple[int, str, ...] -> a", ["'...' goes after the one item type", "column 20"], {"position": 20}),
        ("q: tuple[..., int] -> a", ["expected a type", "found '...'"], {"field": "q"}),
        ("q: tuple[int, ..., str] -> a", ["expected ']' to close 'tuple['", "found ','"], {"field": "q"}),
        ("q: Union -> a", ["'Union' needs type arguments"], {"field": "q"}),
        ("q: Union[None] -> a", ["'None' alone is not a type"], {"field": "q"}),
        ("q: Union[int str] -> a", ["expected ']' to close 'Union['", "found 'str'"], {"field": "q"}),
        ("q: Any[int] -> a", ["type 'Any' takes no arguments", "column 7"], {"field": "q"}),
        ("q: any -> a", ["unknown type 'any'"], {"field": "q"}),
        ("q: Contact -> a", ["unknown type 'Contact'"], {"field": "q"}),
        ("q: Union[list[list[list[list[list[str]]]]], int] -> a", ["nesting is too deep (max 5 levels)"], {}),
        ("q: None -> a", ["'None' alone is not a type"], {"field": "q"}),
        ("q: None | None -> a", ["'None' alone is not a type"], {"field": "q"}),
        ("q: Optional[None] -> a", ["'None' alone is not a type"], {"field": "q"}),
        ("q: Literal[] -> a", ["expected a Literal value", "found ']'"], {"field": "q"}),
        ("q: Literal[x] -> a", ["expected a Literal value", "found 'x'"], {"field": "q"}),
        ("q: Literal[None] -> a", ["expected a Literal value", "found 'None'"], {"field": "q"}),
        ("q: Literal['a', 'a'] -> a", ["duplicate Literal value 'a' for field 'q' at column 17"], {"field": "q"}),
        ("q: Literal[1, 1.0] -> a", ["duplicate Literal value 1.0"], {"field": "q"}),
        ("q: Literal[1e999] -> a", ["out of range"], {"field": "q"}),
        ("q: Literal['\\q'] -> a", ["invalid escape"], {"field": "q"}),
        ("q: Literal['open] -> a", ["unexpected character \"'\""], {"field": "q"}),
        ("q: 'str' -> a", ["expected a type for field 'q' at column 4, found \"'str'\""], {"field": "q"}),
        ("q: typing.List[str] -> a", ["unknown type 'typing'"], {"field": "q"}),
        ("q: list[list[list[list[list[list[str]]]]]] -> a", ["nesting is too deep (max 5 levels)", "column 33"], {}),
    ],
)
def test_string_form_errors(spec: str, pieces: list[str], details: dict[str, Any]) -> None:
    e = err(spec)
    for piece in pieces:
        assert piece in e.message, (piece, e.message)
    for key, value in details.items():
        assert e.details[key] == value, (key, e.details)
    json.dumps(e.body())  # details are JSON-safe


def test_signature_size_is_bounded() -> None:
    e = err("q -> " + "a" * MAX_SIGNATURE_CHARS)
    assert "too long" in e.message
    many = ", ".join(f"f{i}" for i in range(MAX_FIELDS)) + " -> out"
    assert "too many fields" in err(many).message
    ok = ", ".join(f"f{i}" for i in range(MAX_FIELDS - 1)) + " -> out"
    assert len(parse_signature(ok).inputs) == MAX_FIELDS - 1


def test_overlong_field_name_rejected() -> None:
    assert "too long" in err("x" * 101 + " -> a").message


def test_literal_with_too_many_values_rejected() -> None:
    values = ", ".join(str(i) for i in range(300))
    assert "too many values" in err(f"q: Literal[{values}] -> a").message


# --- errors: JSON form ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "pieces", "details"),
    [
        ({"inputs": {"q": "str"}}, ["no output fields"], {}),
        ({"inputs": {"q": "str"}, "outputs": {}}, ["no output fields"], {}),
        ({"outputs": {"a": "set"}}, [f"unknown type 'set' for field 'a' at column 1 of type 'set'; {ALLOWED}"],
         {"field": "a", "position": 1, "section": "outputs"}),
        ({"inputs": {"q": "list[set]"}, "outputs": {"a": "str"}}, ["unknown type 'set'", "column 6"],
         {"field": "q", "position": 6, "section": "inputs"}),
        ({"inputs": {"q": "str"}, "outputs": {"q": "int"}}, ["duplicate field 'q'"], {"field": "q"}),
        ({"outputs": {"a": {"type": "str", "default": 1}}}, ["unknown key(s) 'default' for field 'a'"], {"field": "a"}),
        ({"outputs": {"a": {"desc": "x", "description": "y"}}}, ["both 'desc' and 'description'"], {"field": "a"}),
        ({"outputs": {"a": 3}}, ["field 'a' must be a type string or an object"], {"field": "a"}),
        ({"outputs": {"a": {"type": 3}}}, ["a type must be a string"], {"field": "a"}),
        ({"outputs": {"a": {"desc": 3}}}, ["desc of field 'a' must be a string"], {"field": "a"}),
        ({"outputs": {"1a": "str"}}, ["invalid field name '1a'"], {"field": "1a"}),
        ({"outputs": {"my-field": "str"}}, ["invalid field name 'my-field'"], {}),
        ({"outputs": {"for": "str"}}, ["Python keyword"], {"field": "for"}),
        ({"outputs": ["a", "b"]}, ["'outputs' must be an object"], {"section": "outputs"}),
        ({"outputs": {"a": "str"}, "signature": "q -> a"}, ["unknown key(s) 'signature'", "allowed: instructions"], {}),
        ({"outputs": {"a": "str"}, "instructions": 5}, ["instructions must be a string"], {}),
        ({"outputs": {"a": "str | frozenset"}}, ["unknown type 'frozenset'", "column 7"], {"field": "a"}),
    ],
)
def test_json_form_errors(spec: dict[str, Any], pieces: list[str], details: dict[str, Any]) -> None:
    e = err(spec)
    for piece in pieces:
        assert piece in e.message, (piece, e.message)
    for key, value in details.items():
        assert e.details[key] == value, (key, e.details)


def test_wrong_spec_type() -> None:
    assert "must be a string or an object" in err(42).message  # type: ignore[arg-type]


def test_json_form_field_count_bounded() -> None:
    spec = {"outputs": {f"f{i}": "str" for i in range(MAX_FIELDS + 1)}}
    assert "too many fields" in err(spec).message


# --- one check, one message: the parser and the constructors share each check ------------------


def test_field_name_check_is_shared() -> None:
    long = "x" * 101
    for bad in ("class", long):
        with pytest.raises(SignatureError) as direct:
            Field(bad)
        in_text, in_json = err(f"{bad} -> a"), err({"outputs": {bad: "str"}})
        assert in_text.message.startswith(direct.value.message + " at column 1")
        assert in_json.message == direct.value.message
        assert direct.value.details["field"] == in_text.details["field"] == in_json.details["field"] == bad[:100]


def test_field_count_and_duplicates_are_shared() -> None:
    names = [f"f{i}" for i in range(MAX_FIELDS + 1)]
    expected = f"too many fields ({MAX_FIELDS + 1}; max {MAX_FIELDS})"
    assert err(", ".join(names[:-1]) + " -> " + names[-1]).message == expected
    assert err({"inputs": dict.fromkeys(names[:-1], "str"), "outputs": {names[-1]: "str"}}).message == expected
    with pytest.raises(SignatureError) as direct:
        Signature(inputs=tuple(Field(n) for n in names[:-1]), outputs=(Field(names[-1]),))
    assert direct.value.message == expected
    assert err("a, b -> a").message.startswith("duplicate field 'a' at column")
    assert err({"inputs": {"a": "str"}, "outputs": {"a": "str"}}).message == "duplicate field 'a'"


def test_literal_and_nesting_checks_are_shared() -> None:
    assert err("q: Literal['a', \"a\"] -> r").message.startswith("duplicate Literal value \"a\" for field 'q'")
    with pytest.raises(SignatureError, match='^duplicate Literal value "a"$'):
        TypeSpec.literal("a", "a")
    values = ", ".join(str(i) for i in range(257))
    assert err(f"q: Literal[{values}] -> r").message.startswith("Literal has too many values (max 256) for field")
    with pytest.raises(SignatureError, match=r"^Literal has too many values \(max 256\)$"):
        TypeSpec.literal(*range(257))
    assert len(TypeSpec.literal(*range(256)).args) == 256
    deep = "list[" * 6 + "str" + "]" * 6
    assert err(f"q: {deep} -> r").message.startswith("type nesting is too deep (max 5 levels) for field 'q'")
    with pytest.raises(SignatureError, match=r"^type nesting is too deep \(max 5 levels\): list\["):
        TypeSpec.list_of(parse_type("list[" * 5 + "str" + "]" * 5))


# --- model invariants ----------------------------------------------------------------


def test_models_are_frozen_and_hashable() -> None:
    a = parse_signature("context: list[str], question -> answer: Literal['y', 'n']", "Hi")
    b = parse_signature({"instructions": "Hi", "inputs": {"context": "List[str]", "question": "str"},
                         "outputs": {"answer": "Literal[\"y\", \"n\"]"}})
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a != a.with_instructions("Other")
    with pytest.raises(AttributeError):
        a.instructions = "x"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        a.inputs[0].name = "x"  # type: ignore[misc]


def test_direct_construction_is_validated() -> None:
    with pytest.raises(SignatureError, match="duplicate field 'a'"):
        Signature(inputs=(Field("a"),), outputs=(Field("a"),))
    with pytest.raises(SignatureError, match="no output fields"):
        Signature(inputs=(Field("a"),), outputs=())
    with pytest.raises(SignatureError, match="invalid field name"):
        Field("not valid")
    with pytest.raises(SignatureError, match="unknown type kind"):
        TypeSpec("set")  # type: ignore[arg-type]
    with pytest.raises(SignatureError, match="nesting is too deep"):
        TypeSpec.list_of(parse_type("list[list[list[list[list[str]]]]]"))
    with pytest.raises(SignatureError, match="Literal values must be"):
        TypeSpec.literal(None)  # type: ignore[arg-type]


def test_parse_signature_cached() -> None:
    parse_signature_cached.cache_clear()
    a = parse_signature_cached("q -> a: int")
    assert parse_signature_cached("q -> a: int") is a
    assert parse_signature_cached.cache_info().hits == 1
    assert a == parse_signature("q -> a: int")
    with pytest.raises(SignatureError):
        parse_signature_cached("q -> a: tuple")
    with pytest.raises(SignatureError):
        parse_signature_cached("q -> a: tuple")  # errors are raised every time, never cached


# --- chain of thought ------------------------------------------------------------------


def test_with_reasoning_prepends_reasoning_output() -> None:
    sig = parse_signature("question -> answer: int", "Solve it.")
    cot = sig.with_reasoning()
    assert cot.output_names == (REASONING_FIELD, "answer")
    assert cot.outputs[0].type == TypeSpec("str")
    assert cot.outputs[0].desc and cot.outputs[0].desc.startswith("Think step by step")
    assert cot.inputs == sig.inputs and cot.instructions == sig.instructions
    assert sig.output_names == ("answer",)  # the original is untouched
    assert list(cot.output_json_schema()["properties"]) == ["reasoning", "answer"]


@pytest.mark.parametrize("spec", ["q -> reasoning", "q -> a, reasoning: int", "reasoning -> a"])
def test_with_reasoning_clash_is_an_error(spec: str) -> None:
    sig = parse_signature(spec)  # a field named reasoning is fine without chain of thought
    with pytest.raises(SignatureError, match="already has an? (input|output) named 'reasoning'") as info:
        sig.with_reasoning()
    assert info.value.details["field"] == "reasoning"


def test_with_reasoning_twice_is_an_error() -> None:
    with pytest.raises(SignatureError):
        parse_signature("q -> a").with_reasoning().with_reasoning()


def test_fuzzed_text_only_ever_raises_signature_error() -> None:
    import random

    pieces = list("abz_09 ,:|[]->'\"\\.()\n") + [
        "list", "Dict", "str", "int", "Literal", "Optional", "None", "True", "->", "'a'", "1.5", "\\u00e9",
    ]
    rng = random.Random(1234)
    parsed = 0
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 20)))
        for parse in (parse_signature, parse_type):
            try:
                result = parse(text)
            except SignatureError as exc:
                assert exc.message and exc.status_code == 422
                continue
            parsed += 1
            assert parse(str(result)) == result  # whatever parses round-trips canonically
    assert parsed > 0
