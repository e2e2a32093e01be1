"""app.json_schema: the one JSON-schema generator, behind signature schemas and tool parameters alike."""

from __future__ import annotations

import enum
import json
from typing import Any, Literal, Optional

import pydantic

from app.json_schema import model_json_schema, type_json_schema
from app.services.signature import parse_signature
from app.tools.registry import ToolRegistry

TYPES = (
    "text: str, count: int, ratio: float, ok: bool, tags: list[str], counts: dict[str, int], "
    "label: Literal['pos', 'neg'], one: Literal['x'], nums: Literal[1, 2.5], ints: Literal[1, 2], "
    "flags: Literal[True, False], mixed: Literal['a', 1, True], maybe: Optional[list[int]], "
    "nested: dict[str, list[Optional[Literal[1, 2]]]]"
)


def same_types(  # the TYPES above, as a tool's parameters
    text: str,
    count: int,
    ratio: float,
    ok: bool,
    tags: list[str],
    counts: dict[str, int],
    label: Literal["pos", "neg"],
    one: Literal["x"],
    nums: Literal[1, 2.5],
    ints: Literal[1, 2],
    flags: Literal[True, False],
    mixed: Literal["a", 1, True],
    maybe: Optional[list[int]],  # noqa: UP007
    nested: dict[str, list[Optional[Literal[1, 2]]]],  # noqa: UP007
) -> None:
    """The same types as a signature."""


def test_a_signature_and_a_tool_get_the_same_schema_for_the_same_types() -> None:
    tool = ToolRegistry().register(same_types)
    sig = parse_signature(f"q -> {TYPES}")
    schema = sig.output_json_schema()
    assert tool.parameters == schema
    assert list(tool.parameters["properties"]) == list(schema["properties"]) == list(sig.output_names)
    for f in sig.outputs:
        assert tool.parameters["properties"][f.name] == f.type.to_json_schema(), f.name


def test_the_only_difference_is_key_order() -> None:
    """Tools keep pydantic's alphabetical order, signatures the order a node is built in."""
    tool = ToolRegistry().register(same_types)
    sig = parse_signature(f"q -> {TYPES}")
    assert list(tool.parameters) == ["additionalProperties", "properties", "required", "type"]
    assert list(sig.output_json_schema()) == ["type", "properties", "required", "additionalProperties"]
    assert list(tool.parameters["properties"]["tags"]) == ["items", "type"]
    assert list(sig.output_json_schema()["properties"]["tags"]) == ["type", "items"]
    assert json.dumps(tool.parameters, sort_keys=True) == json.dumps(sig.output_json_schema(), sort_keys=True)


def test_literal_rules() -> None:
    assert type_json_schema(Literal["x"]) == {"enum": ["x"], "type": "string"}  # never "const"
    assert type_json_schema(Literal[1, 2]) == {"enum": [1, 2], "type": "integer"}
    assert type_json_schema(Literal[1, 2.5]) == {"enum": [1, 2.5], "type": "number"}
    assert type_json_schema(Literal[True]) == {"enum": [True], "type": "boolean"}
    assert type_json_schema(Literal[1, True]) == {"enum": [1, True]}  # a boolean is not a number
    assert type_json_schema(Literal["a", 1]) == {"enum": ["a", 1]}

    class Color(str, enum.Enum):
        RED = "red"

    assert type_json_schema(Literal[Color.RED]) == {"const": "red", "type": "string"}  # pydantic's own
    assert type_json_schema(Literal[None]) == {"const": None, "type": "null"}


def test_titles_are_stripped_but_a_property_called_title_stays() -> None:
    class Inner(pydantic.BaseModel):
        title: str

    class Args(pydantic.BaseModel):
        title: str = pydantic.Field(title="Custom title")
        inner: Inner

    schema = model_json_schema(Args)
    assert schema == {
        "$defs": {"Inner": {"properties": {"title": {"type": "string"}}, "required": ["title"], "type": "object"}},
        "properties": {"title": {"type": "string"}, "inner": {"$ref": "#/$defs/Inner"}},
        "required": ["title", "inner"],
        "type": "object",
    }
    assert list(schema) == ["$defs", "properties", "required", "type"]
    assert list(model_json_schema(Args, sort_keys=False)) == ["type", "properties", "required", "$defs"]


def test_tuple_rules() -> None:
    """A fixed tuple's length is bounded by minItems/maxItems, not ``items: false``: llama.cpp's schema
    converter refuses boolean schemas ("schema must be an object"), and vLLM's grammars need none."""
    fixed = {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "minItems": 2, "maxItems": 2}
    assert type_json_schema(tuple[int, str], sort_keys=False) == fixed
    assert type_json_schema(tuple[int, ...]) == {"items": {"type": "integer"}, "type": "array"}


def test_unions_tuples_and_any_are_the_same_for_a_tool_and_a_signature() -> None:
    def tool_fn(a: int | str, b: tuple[int, str], c: tuple[float, ...], d: Any, e: dict[str, Any] | None) -> None:
        """Mixed."""

    tool = ToolRegistry().register(tool_fn)
    sig = parse_signature("q -> a: int | str, b: tuple[int, str], c: tuple[float, ...], d: Any, "
                          "e: Optional[dict[str, Any]]")
    assert tool.parameters == sig.output_json_schema()
