"""JSON Schema for what a model reads: the one generator behind signature schemas and tool parameters.

A signature's output schema (vLLM structured outputs) and a tool's ``parameters`` (OpenAI function
calling) are both the JSON schema of a pydantic model of named, typed fields. Both are generated
here, by pydantic's generator with one set of rules on top:

* no generated ``title`` keys: tokens the model need not read (a *property* may well be called
  ``title`` and is kept);
* a ``Literal`` is an ``enum`` (never ``const``), with a ``type`` when all its values are of one
  JSON class: booleans are not numbers, ints and floats are one class (``integer`` when all are
  ints). So ``Literal["a"]`` is ``{"enum": ["a"], "type": "string"}``, ``Literal[1, 2.5]`` a
  ``number`` and ``Literal[1, True]`` has no ``type``;
* a fixed-length tuple (``tuple[int, str]``) is ``prefixItems`` with ``minItems``/``maxItems``
  (pydantic's own; never a boolean schema such as ``items: false``, which llama.cpp refuses); a
  variadic one (``tuple[int, ...]``) is an array of ``items``.

The one thing a caller chooses is key order, because both orders are already on the wire:
``sort_keys=True`` is pydantic's alphabetical order (tool schemas, which chat templates render
into the prompt as text); ``sort_keys=False`` keeps the order pydantic builds a node in, ``type``
first (signature schemas, as structured-output requests have always carried them).
"""

from __future__ import annotations

from typing import Any, ClassVar

import pydantic
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

__all__ = ["json_class", "literal_schema", "model_json_schema", "strip_titles", "type_json_schema"]

_LITERAL_TYPES = (str, int, float, bool)


def json_class(value: Any) -> str:
    """The JSON type class of a literal value: ``boolean``, ``number`` (ints and floats) or ``string``."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "string"


def literal_schema(values: tuple[Any, ...] | list[Any]) -> dict[str, Any]:
    """``{"enum": [...]}`` plus a ``type`` when the values share a JSON class (str, int, float, bool values)."""
    schema: dict[str, Any] = {"enum": list(values)}
    classes = {json_class(v) for v in values}
    if classes == {"number"}:
        schema["type"] = "integer" if all(isinstance(v, int) for v in values) else "number"
    elif len(classes) == 1:
        schema["type"] = classes.pop()
    return schema


class _Generator(GenerateJsonSchema):
    sort_keys: ClassVar[bool] = True

    def sort(self, value: JsonSchemaValue, parent_key: str | None = None) -> JsonSchemaValue:
        return super().sort(value, parent_key) if self.sort_keys else value

    def literal_schema(self, schema: core_schema.LiteralSchema) -> JsonSchemaValue:
        values = schema["expected"]
        # exact types: an Enum member (even a str one) or None keeps pydantic's own rendering
        if not values or any(type(v) not in _LITERAL_TYPES for v in values):
            return super().literal_schema(schema)
        return literal_schema(values)

class _Unsorted(_Generator):
    sort_keys = False


def _generator(sort_keys: bool) -> type[GenerateJsonSchema]:
    return _Generator if sort_keys else _Unsorted


def model_json_schema(model: type[pydantic.BaseModel], *, sort_keys: bool = True) -> dict[str, Any]:
    """The JSON schema of a pydantic model's (validation) input, by the rules above."""
    return strip_titles(model.model_json_schema(schema_generator=_generator(sort_keys)))  # type: ignore[no-any-return]


def type_json_schema(annotation: Any, *, sort_keys: bool = True) -> dict[str, Any]:
    """The JSON schema of one Python type (``list[int]``, ``Optional[Literal["a"]]``...), by the rules above."""
    schema = pydantic.TypeAdapter(annotation).json_schema(schema_generator=_generator(sort_keys))
    return strip_titles(schema)  # type: ignore[no-any-return]


def strip_titles(node: Any) -> Any:
    """A copy without pydantic's generated ``title`` keys (names of properties and definitions stay)."""
    if isinstance(node, list):
        return [strip_titles(v) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in ("properties", "$defs", "definitions", "patternProperties") and isinstance(value, dict):
            # keys here are names (a property may well be called "title"), values are schemas
            out[key] = {k: strip_titles(v) for k, v in value.items()}
        else:
            out[key] = strip_titles(value)
    return out
