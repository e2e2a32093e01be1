"""JSON schemas of a signature's fields, made by the one generator in :mod:`app.json_schema`.

A signature's fields become a pydantic model of their plain Python types (exactly as a tool's
parameters do), and the schema is that model's: properties in field order, ``description`` from
the field's desc, ``additionalProperties: false``. Keys come in the order pydantic builds them
(``type`` first), and ``required`` is always stated, right after ``properties``.

An object type is a model of its own, named after the type: it is in ``$defs`` (in the order
pydantic lists them) and each use is a ``$ref`` to it (xgrammar, vLLM's default structured-output
backend, follows local ``$ref``), with every property required (an Optional one may be null).
Constraints are the field's, where the grammar can enforce them (see ``constraints.py``).

Nothing in a schema depends on anything but the signature: no ids, no counters, no timestamps, so
identical signatures give byte-identical schemas and vLLM's grammar cache hits.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, create_model
from pydantic import Field as PydanticField

from app.json_schema import model_json_schema, type_json_schema
from app.services.signature.checks import schema_budget_problem

if TYPE_CHECKING:
    from app.services.signature.types import Field, ObjectType, TypeSpec


def fields_schema(fields: tuple[Field, ...], *, required: Iterable[str] | None = None) -> dict[str, Any]:
    """The object schema of ``fields``; ``required``: the names to require (default: all of them)."""
    schema = copy.deepcopy(_fields_schema(fields))
    names = [f.name for f in fields] if required is None else list(required)
    out: dict[str, Any] = {}
    for key, value in schema.items():  # pydantic leaves out an empty "required"; this schema states it
        if key != "required":
            out[key] = value
        if key == "properties":
            out["required"] = names
    return out


def type_schema(spec: TypeSpec) -> dict[str, Any]:
    """The schema of one type."""
    return copy.deepcopy(_type_schema(spec))


@lru_cache(maxsize=1024)
def output_budget_problem(fields: tuple[Field, ...]) -> tuple[str, dict[str, Any]] | None:
    """Whether the object schema of ``fields`` (as the outputs) is past a budget: see ``checks``."""
    return schema_budget_problem(_fields_schema(fields))


@lru_cache(maxsize=1024)
def _fields_schema(fields: tuple[Field, ...]) -> dict[str, Any]:
    return model_json_schema(_schema_model(fields), sort_keys=False)


@lru_cache(maxsize=1024)
def _type_schema(spec: TypeSpec) -> dict[str, Any]:
    return type_json_schema(_annotation(spec), sort_keys=False)


@dataclass(frozen=True)
class _Declared:
    """Annotated metadata naming the spec a Literal came from (pydantic ignores it). It compares
    by the spec's canonical text, so it tells ``Literal[1, True]`` from ``Literal[True, 1]``."""

    spec: TypeSpec


def _pin(spec: TypeSpec, annotation: Any) -> Any:
    # an Optional union is the flat Union[A, B, None]: pinned too, or list[Union[A, B, None]] equals
    # list[Union[B, A, None]] and an outer union holding it comes back from typing's cache reordered
    return Annotated[annotation, _Declared(spec)] if spec.kind in ("literal", "union", "optional") else annotation


def _annotation(spec: TypeSpec) -> Any:
    """``spec.to_annotation()`` with each Literal (union, Optional) pinned to its declared order. typing
    caches ``Optional[X]`` and ``Annotated[X, ...]`` by equality, and ``Literal['a', 1] == Literal[1, 'a']``
    (``Union[int, str] == Union[str, int]`` too): without the pin, ``Optional[Literal[1, 'a']]`` can
    come back holding an earlier ``Literal['a', 1]``, and the enum would list the values in that order."""
    return spec.to_annotation(_pin, object_model)


def _field_annotation(f: Field) -> Any:
    annotation = _annotation(f.type)
    inner = _annotation(f.type.args[0]) if f.type.kind == "optional" else None
    return f.constraints.apply(f.type, annotation, inner, for_schema=True)


@lru_cache(maxsize=1024)
def object_model(obj: ObjectType) -> type[BaseModel]:
    """The pydantic model an object type's schema is made from (one class per definition, so that
    every use of it is one ``$defs`` entry)."""
    return _model(obj.name, obj.fields)


def _schema_model(fields: tuple[Field, ...]) -> type[BaseModel]:
    return _model("SignatureFields", fields)


def _model(name: str, fields: tuple[Field, ...]) -> type[BaseModel]:
    # attribute names f0, f1, ... with the real names as aliases, as for validation (validate.py):
    # a field may be called anything valid in a signature ("json", "model_config", "_private")
    definitions: dict[str, Any] = {
        f"f{i}": (_field_annotation(f), PydanticField(..., alias=f.name, description=f.desc))
        for i, f in enumerate(fields)
    }
    return create_model(  # type: ignore[call-overload,no-any-return]
        name, __config__=ConfigDict(extra="forbid"), **definitions
    )
