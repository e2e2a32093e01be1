"""Parsing a signature never evaluates, imports or compiles anything from the request."""

from __future__ import annotations

import ast
import builtins
import importlib
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from app.errors import SignatureError
from app.services.signature import Signature, parse_signature

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
