"""JSON schemas of a signature's fields and types, for structured outputs: no ``$ref``, ``enum``
for Literal, ``anyOf`` with null for Optional."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from app.services.signature.checks import literal_class

if TYPE_CHECKING:
    from app.services.signature.types import Field, TypeSpec


def fields_schema(fields: tuple[Field, ...], *, required: Iterable[str] | None = None) -> dict[str, Any]:
    """The object schema of ``fields``; ``required``: the names to require (default: all of them)."""
    properties: dict[str, Any] = {}
    for f in fields:
        prop = type_schema(f.type)
        if f.desc:
            prop["description"] = f.desc
        properties[f.name] = prop
    return {
        "type": "object",
        "properties": properties,
        "required": [f.name for f in fields] if required is None else list(required),
        "additionalProperties": False,
    }


def type_schema(spec: TypeSpec) -> dict[str, Any]:
    """The schema of one type."""
    kind = spec.kind
    if kind == "str":
        return {"type": "string"}
    if kind == "int":
        return {"type": "integer"}
    if kind == "float":
        return {"type": "number"}
    if kind == "bool":
        return {"type": "boolean"}
    if kind == "list":
        return {"type": "array", "items": type_schema(spec.args[0])}
    if kind == "dict":
        return {"type": "object", "additionalProperties": type_schema(spec.args[0])}
    if kind == "optional":
        return {"anyOf": [type_schema(spec.args[0]), {"type": "null"}]}
    schema: dict[str, Any] = {"enum": list(spec.args)}
    classes = {literal_class(v) for v in spec.args}
    if classes == {"number"}:
        schema["type"] = "integer" if all(isinstance(v, int) for v in spec.args) else "number"
    elif len(classes) == 1:
        schema["type"] = classes.pop()
    return schema
