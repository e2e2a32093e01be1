"""Signature parsing, types, schemas and validation."""

from __future__ import annotations

import ast
import builtins
import importlib
import json
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, Optional

import pytest

from app.errors import InvalidRequestError, OutputValidationError, SignatureError
from app.services.signature import (
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
from app.services.signature import validate as signature_validate

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

ALLOWED = "allowed: str, int, float, bool, list[T], dict[str, T], Literal[...], Optional[T]"


def test_unknown_type_names_field_column_and_whitelist() -> None:
    e = err("question: str, x: tuple -> answer")
    assert e.message == f"unknown type 'tuple' for field 'x' at column 19; {ALLOWED}"
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
        ("q: str | int -> a", ["unions are not supported for field 'q' at column 4", "'str | int'"], {"field": "q"}),
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


# --- never evaluate request text -----------------------------------------------------


@pytest.mark.parametrize(
    "evil",
    [
        "__import__('os').system('touch /tmp/pwned')",
        "os.system",
        "eval('1')",
        "exec",
        "type",
        "object",
        "list[__import__('os').system('x')]",
        "Literal[__import__('os')]",
        "dict[str, os.environ]",
        "lambda: 1",
        "str; import os",
        "getattr(str, 'x')",
    ],
)
def test_malicious_types_are_rejected_without_evaluation(evil: str, monkeypatch: pytest.MonkeyPatch) -> None:
    called: list[str] = []
    real_import = builtins.__import__

    def spy_import(name: str, *args: Any, **kwargs: Any) -> Any:
        called.append(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", spy_import)
    monkeypatch.setattr(builtins, "eval", lambda *a, **k: called.append("eval"))
    monkeypatch.setattr(builtins, "exec", lambda *a, **k: called.append("exec"))
    with pytest.raises(SignatureError) as info:
        parse_signature(f"x: {evil} -> y")
    assert info.value.details["field"] == "x"
    with pytest.raises(SignatureError):
        parse_signature({"inputs": {"x": evil}, "outputs": {"y": "str"}})
    assert "os" not in called and "eval" not in called and "exec" not in called


# Everything Python offers to turn text into code or objects: none may run while a signature is parsed.
EVALUATORS = [
    (builtins, "eval"),
    (builtins, "exec"),
    (builtins, "compile"),
    (builtins, "__import__"),
    (importlib, "import_module"),
    (ast, "literal_eval"),
    (typing, "get_type_hints"),
    (typing, "_eval_type"),
    (typing.ForwardRef, "_evaluate"),
]


@contextmanager
def evaluation_forbidden() -> Iterator[list[str]]:
    """Replace every evaluator with a tripwire that records the call and raises; yields the record.
    Restored on exit, before the caller asserts anything (pytest itself may import lazily)."""
    calls: list[str] = []
    saved = [(owner, name, getattr(owner, name)) for owner, name in EVALUATORS]

    def tripwire(label: str) -> Any:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            calls.append(label)
            raise AssertionError(f"{label} was called while parsing a signature")

        return refuse

    for owner, name, _ in saved:
        setattr(owner, name, tripwire(f"{getattr(owner, '__name__', owner)}.{name}"))
    try:
        yield calls
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def parse_without_evaluation(spec: Any) -> tuple[Signature | SignatureError, list[str]]:
    """Parse ``spec`` with evaluation forbidden: (the signature or the SignatureError, evaluator calls)."""
    with evaluation_forbidden() as calls:
        try:
            result: Signature | SignatureError = parse_signature(spec)
        except SignatureError as exc:
            result = exc
    return result, calls


HOSTILE_SIGNATURES: list[Any] = [
    "q -> a: __import__('os').system('x')",
    "q -> a: os.system",
    "q -> a: os.system('touch /tmp/pwned')",
    "q -> a: eval('1')",
    "q -> a: exec",
    "q -> a: lambda: 1",
    "q -> a: (lambda: str)()",
    "q: lambda x: x -> a",
    "q -> a: str.__class__",
    "q -> a: ().__class__.__bases__[0].__subclasses__()",
    "q -> a: list[str].__origin__",
    "q -> a: Literal['x'].__args__",
    "q -> a: typing.List[str]",
    "q -> a: builtins.str",
    "q -> a: globals()['x']",
    "q -> a: list[__import__('os').system('x')]",
    "q -> a: dict[str, os.environ]",
    "q -> a: Literal[__import__('os')]",
    "q -> a: Literal[eval('1')]",
    "q -> a: Optional['os.system']",
    "q -> a: 'str'",
    "q -> a: str; import os",
    "q -> a: str if True else int",
    "q -> a = __import__('os')",
    "__import__('os') -> a",
    "q.__class__ -> a",
    "import -> a",
    {"inputs": {"q": "__import__('os').system('x')"}, "outputs": {"a": "str"}},
    {"outputs": {"a": "os.system"}},
    {"outputs": {"a": {"type": "lambda: 1", "desc": "a lambda"}}},
    {"outputs": {"a": {"type": "str.__class__"}}},
    {"outputs": {"a": "list[eval('str')]"}},
    {"outputs": {"__import__('os')": "str"}},
    {"outputs": {"a.b": "str"}},
]

BENIGN_SIGNATURES: list[Any] = [
    "question -> answer",
    "context: list[str], question: str -> answer: str, confidence: float",
    "q: Optional[dict[str, list[int]]], hint: str | None -> v: Literal['__import__', 'eval', 1, 2.5, True]",
    "q -> a: dict[str, list[Optional[Literal['x', 2]]]]",
    {"inputs": {"q": "list[str]"}, "outputs": {"a": {"type": "Literal['os.system']", "desc": "eval me not"}}},
]


@pytest.mark.parametrize("spec", HOSTILE_SIGNATURES, ids=repr)
def test_hostile_signatures_are_refused_without_evaluation(spec: Any) -> None:
    result, calls = parse_without_evaluation(spec)
    assert calls == []
    assert isinstance(result, SignatureError), result
    assert result.status_code == 422 and result.body()["type"] == "invalid_signature"


@pytest.mark.parametrize("spec", BENIGN_SIGNATURES, ids=repr)
def test_valid_signatures_parse_without_evaluation(spec: Any) -> None:
    result, calls = parse_without_evaluation(spec)
    assert calls == []
    assert isinstance(result, Signature), result
    assert result == parse_signature(spec)


def test_the_evaluation_tripwires_fire() -> None:
    """The test above would catch an evaluating parser: each tripwire records and raises."""
    for owner, name in EVALUATORS:
        with evaluation_forbidden() as calls:
            with pytest.raises(AssertionError, match="while parsing a signature"):
                getattr(owner, name)("x")
        assert calls == [f"{getattr(owner, '__name__', owner)}.{name}"]
        assert getattr(owner, name) is not None and "refuse" not in getattr(owner, name).__qualname__


# --- errors: JSON form ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "pieces", "details"),
    [
        ({"inputs": {"q": "str"}}, ["no output fields"], {}),
        ({"inputs": {"q": "str"}, "outputs": {}}, ["no output fields"], {}),
        ({"outputs": {"a": "tuple"}}, [f"unknown type 'tuple' for field 'a' at column 1 of type 'tuple'; {ALLOWED}"],
         {"field": "a", "position": 1, "section": "outputs"}),
        ({"inputs": {"q": "list[tuple]"}, "outputs": {"a": "str"}}, ["unknown type 'tuple'", "column 6"],
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
        ({"outputs": {"a": "str | int"}}, ["unions are not supported"], {"field": "a"}),
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
        TypeSpec("tuple")  # type: ignore[arg-type]
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
