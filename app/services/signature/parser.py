"""The two forms of a signature, read into a :class:`Signature`: the DSPy string form (through
the grammar in ``grammar.py``) and the JSON form, whose types are strings of the same grammar.

The JSON form may declare object types (``"types": {"Contact": {"name": "str", ...}}``), each in
the field form of ``inputs`` and ``outputs``; a type string anywhere in the signature (another
type's too) may name them. They are resolved by name on first use, so the order they are declared
in does not matter; an unknown name, a cycle, or nesting past MAX_OBJECT_DEPTH is an error naming
the type. Every declared type is checked, used or not; unused ones are not part of the signature.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from app.errors import SignatureError
from app.services.signature.checks import (
    MAX_OBJECT_DEPTH,
    MAX_OBJECT_TYPES,
    MAX_SIGNATURE_CHARS,
    MAX_TOTAL_FIELDS,
    MAX_TOTAL_TYPE_CHARS,
    MAX_TYPE_CHARS,
    NO_OUTPUTS,
    FieldNames,
    check_field_name,
    type_name_problem,
)
from app.services.signature.constraints import CONSTRAINT_KEYS, constraints_from_spec
from app.services.signature.grammar import Parser
from app.services.signature.model import Signature
from app.services.signature.types import Field, ObjectType, TypeSpec


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


def parse_type(
    text: str, *, field: str | None = None, resolve: Callable[[str], TypeSpec | None] | None = None
) -> TypeSpec:
    """Parse one type string, e.g. ``"list[dict[str, int]]"``; ``resolve`` finds object types by name."""
    if not isinstance(text, str):
        details = {"field": field} if field else {}
        raise SignatureError(f"a type must be a string, not {type(text).__name__}", **details)
    if len(text) > MAX_TYPE_CHARS:
        details = {"field": field} if field else {}
        raise SignatureError(f"type is too long ({len(text)} chars; max {MAX_TYPE_CHARS})", **details)
    parser = Parser(text, type_of=field or "")
    parser.resolve = resolve
    return parser.whole_type()


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

_JSON_KEYS = ("instructions", "types", "inputs", "outputs")
_FIELD_KEYS = ("type", "desc", "description", *CONSTRAINT_KEYS)


def _from_mapping(spec: Mapping[str, Any]) -> tuple[str | None, tuple[Field, ...], tuple[Field, ...]]:
    unknown = [k for k in spec if k not in _JSON_KEYS]
    if unknown:
        raise SignatureError(
            f"unknown key(s) {', '.join(repr(str(k)) for k in unknown)} in the signature object; "
            f"allowed: {', '.join(_JSON_KEYS)}"
        )
    if "outputs" not in spec:
        raise SignatureError(f"{NO_OUTPUTS}: the signature object needs 'outputs'")
    types = _ObjectTypes(spec.get("types"))
    types.resolve_all()
    names = FieldNames()
    inputs = _fields_from_json("inputs", spec.get("inputs"), names, types)
    outputs = _fields_from_json("outputs", spec.get("outputs"), names, types)
    instructions = spec.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise SignatureError(f"instructions must be a string, not {type(instructions).__name__}")
    return instructions, inputs, outputs


class _ObjectTypes:
    """The ``types`` section, resolved by name on demand (``self(name)``, for the parser); it also
    counts every field of the JSON form and its type's text against MAX_TOTAL_* (:meth:`charge`)."""

    def __init__(self, raw: Any) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise SignatureError(
                f"'types' must be an object mapping type names to their fields, not {type(raw).__name__}",
                section="types",
            )
        if len(raw) > MAX_OBJECT_TYPES:
            raise SignatureError(f"too many object types ({len(raw)}; max {MAX_OBJECT_TYPES})", section="types")
        for name in raw:
            problem = type_name_problem(name)
            if problem is not None:
                named = {"type_name": name[:100]} if isinstance(name, str) else {}
                raise SignatureError(problem, section="types", **named)
        self.raw = raw
        self.built: dict[str, TypeSpec] = {}
        self.stack: list[str] = []
        self.fields = 0
        self.type_chars = 0

    def charge(self, section: str, item: Any) -> None:
        """Count one field (its spec ``item``) against the JSON form's totals, before its type is parsed."""
        self.fields += 1
        text = item.get("type", "str") if isinstance(item, Mapping) else item
        self.type_chars += len(text) if isinstance(text, str) else 0
        for total, limit, name, what in ((self.fields, MAX_TOTAL_FIELDS, "MAX_TOTAL_FIELDS", "fields"),
                                         (self.type_chars, MAX_TOTAL_TYPE_CHARS, "MAX_TOTAL_TYPE_CHARS",
                                          "characters of type text")):
            if total > limit:
                raise SignatureError(f"the signature has more than {limit} {what}, its object types' included "
                                     f"(the limit {name})", section=section, limit=name, max=limit)

    def resolve_all(self) -> None:
        for name in self.raw:
            self(name)

    def __call__(self, name: str) -> TypeSpec | None:
        if name not in self.raw:
            return None
        if name in self.built:
            return self.built[name]
        details = {"type_name": name, "section": "types"}
        if name in self.stack:
            cycle = " -> ".join([*self.stack[self.stack.index(name):], name])
            raise SignatureError(f"object type {name!r} contains itself: {cycle}", **details)
        if len(self.stack) >= MAX_OBJECT_DEPTH:
            chain = " -> ".join([*self.stack, name])
            raise SignatureError(
                f"object type {self.stack[0]!r} nests object types too deeply ({chain}; max {MAX_OBJECT_DEPTH})",
                **{**details, "type_name": self.stack[0]},
            )
        body = self.raw[name]
        if not isinstance(body, Mapping):
            raise SignatureError(
                f"object type {name!r} must be an object mapping field names to types, not {type(body).__name__}",
                **details,
            )
        self.stack.append(name)
        try:
            fields = _fields_from_json("types", body, FieldNames(), self)
            spec = TypeSpec.of_object(ObjectType(name, fields))
        except SignatureError as exc:
            if "type_name" in exc.details:
                raise
            raise SignatureError(f"{exc.message} (in object type {name!r})", **{**exc.details, **details}) from None
        finally:
            self.stack.pop()
        self.built[name] = spec
        return spec


def _fields_from_json(section: str, value: Any, names: FieldNames, types: _ObjectTypes) -> tuple[Field, ...]:
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
        types.charge(section, item)
        try:
            fields.append(_field_from_json(name, item, types))
        except SignatureError as exc:
            exc.details.setdefault("section", section)
            raise
    return tuple(fields)


def _field_from_json(name: str, item: Any, types: _ObjectTypes) -> Field:
    if isinstance(item, str):
        return Field(name, parse_type(item, field=name, resolve=types))
    if not isinstance(item, Mapping):
        raise SignatureError(
            f"field {name!r} must be a type string or an object with 'type' and 'desc', not {type(item).__name__}",
            field=name,
        )
    unknown = [k for k in item if k not in _FIELD_KEYS]
    if unknown:
        raise SignatureError(
            f"unknown key(s) {', '.join(repr(str(k)) for k in unknown)} for field {name!r}; "
            f"allowed: type, desc, {', '.join(CONSTRAINT_KEYS)}",
            field=name,
        )
    if "desc" in item and "description" in item:
        raise SignatureError(f"field {name!r} has both 'desc' and 'description'", field=name)
    spec = parse_type(item.get("type", "str"), field=name, resolve=types)
    constraints = constraints_from_spec(dict(item), field=name)
    return Field(name, spec, item.get("desc", item.get("description")), constraints)
