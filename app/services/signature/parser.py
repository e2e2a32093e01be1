"""The two forms of a signature, read into a :class:`Signature`: the DSPy string form (through
the grammar in ``grammar.py``) and the JSON form, whose types are strings of the same grammar."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from app.errors import SignatureError
from app.services.signature.checks import (
    MAX_SIGNATURE_CHARS,
    MAX_TYPE_CHARS,
    NO_OUTPUTS,
    FieldNames,
    check_field_name,
)
from app.services.signature.grammar import Parser
from app.services.signature.types import Field, Signature, TypeSpec


def parse_signature(spec: str | Mapping[str, Any] | Signature, instructions: str | None = None) -> Signature:
    """Parse the string or JSON form. ``instructions``, when given, override the JSON form's.

    Raises SignatureError (422) naming the field, what was found and, for text, the 1-based
    column (``position`` in the error details)."""
    if isinstance(spec, Signature):
        return spec if instructions is None else spec.with_instructions(instructions)
    if isinstance(spec, str):
        inputs, outputs = _from_string(spec)
        return Signature(instructions=instructions, inputs=inputs, outputs=outputs)
    if isinstance(spec, Mapping):
        own, inputs, outputs = _from_mapping(spec)
        return Signature(instructions=instructions if instructions is not None else own, inputs=inputs, outputs=outputs)
    raise SignatureError(f"a signature must be a string or an object, not {type(spec).__name__}")


@lru_cache(maxsize=1024)
def parse_signature_cached(spec: str, instructions: str | None = None) -> Signature:
    """:func:`parse_signature` for string specs, memoised (errors are not cached)."""
    if not isinstance(spec, str):
        raise SignatureError(f"parse_signature_cached takes a string, not {type(spec).__name__}")
    return parse_signature(spec, instructions)


def parse_type(text: str, *, field: str | None = None) -> TypeSpec:
    """Parse one type string, e.g. ``"list[dict[str, int]]"``."""
    if not isinstance(text, str):
        details = {"field": field} if field else {}
        raise SignatureError(f"a type must be a string, not {type(text).__name__}", **details)
    if len(text) > MAX_TYPE_CHARS:
        details = {"field": field} if field else {}
        raise SignatureError(f"type is too long ({len(text)} chars; max {MAX_TYPE_CHARS})", **details)
    return Parser(text, type_of=field or "").whole_type()


# --- the string form ------------------------------------------------------------


def _from_string(spec: str) -> tuple[tuple[Field, ...], tuple[Field, ...]]:
    if len(spec) > MAX_SIGNATURE_CHARS:
        raise SignatureError(f"signature is too long ({len(spec)} chars; max {MAX_SIGNATURE_CHARS})")
    parser = Parser(spec)
    inputs, outputs = parser.signature()
    names = FieldNames()
    for f, pos in (*inputs, *outputs):
        problem = names.add(f.name)
        if problem is not None:
            raise parser.error(problem, pos, field=f.name, mention_field=False)
    if not outputs:
        raise SignatureError(f"{NO_OUTPUTS} (e.g. 'question -> answer')", position=len(spec) + 1)
    problem = names.too_many()
    if problem is not None:
        raise SignatureError(problem)
    return tuple(f for f, _ in inputs), tuple(f for f, _ in outputs)


# --- the JSON form ----------------------------------------------------------------

_JSON_KEYS = ("instructions", "inputs", "outputs")
_FIELD_KEYS = ("type", "desc", "description")


def _from_mapping(spec: Mapping[str, Any]) -> tuple[str | None, tuple[Field, ...], tuple[Field, ...]]:
    unknown = [k for k in spec if k not in _JSON_KEYS]
    if unknown:
        raise SignatureError(
            f"unknown key(s) {', '.join(repr(str(k)) for k in unknown)} in the signature object; "
            f"allowed: {', '.join(_JSON_KEYS)}"
        )
    if "outputs" not in spec:
        raise SignatureError(f"{NO_OUTPUTS}: the signature object needs 'outputs'")
    names = FieldNames()
    inputs = _fields_from_json("inputs", spec.get("inputs"), names)
    outputs = _fields_from_json("outputs", spec.get("outputs"), names)
    instructions = spec.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise SignatureError(f"instructions must be a string, not {type(instructions).__name__}")
    return instructions, inputs, outputs


def _fields_from_json(section: str, value: Any, names: FieldNames) -> tuple[Field, ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise SignatureError(
            f"'{section}' must be an object mapping field names to types, not {type(value).__name__}",
            section=section,
        )
    fields: list[Field] = []
    for name, item in value.items():
        check_field_name(name)
        problem = names.add(name)
        if problem is not None:
            raise SignatureError(problem, field=name, section=section)
        problem = names.too_many()  # counted as they come: a huge object is refused before its types are read
        if problem is not None:
            raise SignatureError(problem, section=section)
        desc: Any = None
        if isinstance(item, str):
            type_text = item
        elif isinstance(item, Mapping):
            unknown = [k for k in item if k not in _FIELD_KEYS]
            if unknown:
                raise SignatureError(
                    f"unknown key(s) {', '.join(repr(str(k)) for k in unknown)} for field {name!r}; "
                    "allowed: type, desc",
                    field=name,
                    section=section,
                )
            if "desc" in item and "description" in item:
                raise SignatureError(f"field {name!r} has both 'desc' and 'description'", field=name, section=section)
            type_text = item.get("type", "str")
            desc = item.get("desc", item.get("description"))
        else:
            raise SignatureError(
                f"field {name!r} must be a type string or an object with 'type' and 'desc', "
                f"not {type(item).__name__}",
                field=name,
                section=section,
            )
        try:
            spec = parse_type(type_text, field=name)
            fields.append(Field(name, spec, desc))
        except SignatureError as exc:
            exc.details.setdefault("section", section)
            raise
    return tuple(fields)
