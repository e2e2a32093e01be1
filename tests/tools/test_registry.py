from __future__ import annotations

import json
from typing import Annotated, Literal

import pytest
from pydantic import Field

from app.errors import InvalidRequestError
from app.tools.registry import ArgumentsError, ToolRegistry


def test_schema_description_and_kind_come_from_the_function() -> None:
    registry = ToolRegistry()

    @registry.tool()
    def lookup(
        city: Annotated[str, Field(description="the city name")],
        days: Annotated[int, Field(ge=1, le=7)] = 3,
        units: Literal["metric", "imperial"] = "metric",
        tags: list[str] | None = None,
        title: str = "",  # a parameter called "title" survives the title stripping
    ) -> dict:
        """Look up the weather forecast.

        More details for humans.
        """
        return {}

    tool = registry.get("lookup")
    assert tool is not None and not tool.is_async
    assert tool.description.startswith("Look up the weather forecast.\n\nMore details")
    assert tool.parameters == {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "city": {"type": "string", "description": "the city name"},
            "days": {"type": "integer", "minimum": 1, "maximum": 7, "default": 3},
            "units": {"type": "string", "enum": ["metric", "imperial"], "default": "metric"},
            "tags": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}], "default": None},
            "title": {"type": "string", "default": ""},
        },
        "required": ["city"],
    }


def test_parameters_text_is_pinned_byte_for_byte() -> None:
    """Chat templates render a tool's schema into the prompt as text: its bytes, key order (pydantic's
    alphabetical one) included, must not drift when the schema generator changes."""
    registry = ToolRegistry()

    @registry.tool()
    def lookup(
        city: Annotated[str, Field(description="the city name")],
        days: Annotated[int, Field(ge=1, le=7)] = 3,
        units: Literal["metric", "imperial"] = "metric",
        tags: list[str] | None = None,
        title: str = "",
    ) -> dict:
        """Look up the weather forecast."""
        return {}

    assert json.dumps(registry.get("lookup").parameters) == (  # type: ignore[union-attr]
        '{"additionalProperties": false, "properties": {"city": {"description": "the city name", "type": "string"}, '
        '"days": {"default": 3, "maximum": 7, "minimum": 1, "type": "integer"}, '
        '"units": {"default": "metric", "enum": ["metric", "imperial"], "type": "string"}, '
        '"tags": {"anyOf": [{"items": {"type": "string"}, "type": "array"}, {"type": "null"}], "default": null}, '
        '"title": {"default": "", "type": "string"}}, "required": ["city"], "type": "object"}'
    )


def test_decorator_returns_the_function_and_detects_async() -> None:
    registry = ToolRegistry()

    async def fetch(url: str) -> str:
        """Fetch."""
        return url

    assert registry.tool(timeout_s=1.5)(fetch) is fetch
    tool = registry.get("fetch")
    assert tool is not None and tool.is_async and tool.timeout_s == 1.5


def test_validation_coerces_like_pydantic_and_refuses_extras() -> None:
    registry = ToolRegistry()

    @registry.tool()
    def add(a: int, b: int = 1) -> int:
        """Add."""
        return a + b

    validate = registry.get("add").validate  # type: ignore[union-attr]
    assert validate({"a": "2"}) == {"a": 2, "b": 1}
    with pytest.raises(ArgumentsError) as info:
        validate({"b": "x", "c": 1})
    locs = {tuple(e["loc"]): e["type"] for e in info.value.errors}
    assert locs == {("a",): "missing", ("b",): "int_parsing", ("c",): "extra_forbidden"}
    assert "invalid arguments for add" in info.value.message
    assert all("input" not in e for e in info.value.errors)  # errors never echo values


def test_duplicate_name_fails_at_registration() -> None:
    registry = ToolRegistry()

    def f() -> None:
        """F."""

    registry.register(f)
    with pytest.raises(ValueError, match="already registered"):
        registry.register(f)
    with pytest.raises(ValueError, match="already registered"):
        registry.register(lambda: None, name="f", description="another f")


@pytest.mark.parametrize("name", ["", "has space", "1starts_with_digit", "x" * 65, "dot.ted"])
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="invalid tool name"):
        ToolRegistry().register(lambda: None, name=name, description="d")


def test_registration_mistakes_fail_early() -> None:
    registry = ToolRegistry()

    def undocumented(x: int) -> int:
        return x

    def star(*args: int) -> None:
        """Star."""

    def kw(**kwargs: int) -> None:
        """Kw."""

    with pytest.raises(ValueError, match="no description"):
        registry.register(undocumented)
    with pytest.raises(TypeError, match="passable by keyword"):
        registry.register(star)
    with pytest.raises(TypeError, match="passable by keyword"):
        registry.register(kw)
    with pytest.raises(ValueError, match="gives no reason"):
        registry.register(undocumented, description="d", available=False)
    with pytest.raises(ValueError, match="timeout_s"):
        registry.register(undocumented, description="d", timeout_s=0)
    assert len(registry) == 0


def test_openai_tools_lists_available_tools_in_openai_form() -> None:
    registry = ToolRegistry()
    registry.register(lambda q: q, name="search", description="Search.", available=False,
                      unavailable_reason="no backend")
    registry.register(lambda: 1, name="one", description="One.")
    registry.register(lambda: 2, name="two", description="Two.")

    assert registry.openai_tools() == [
        {"type": "function", "function": {"name": "one", "description": "One.",
                                          "parameters": {"type": "object", "properties": {},
                                                         "additionalProperties": False}}},
        {"type": "function", "function": {"name": "two", "description": "Two.",
                                          "parameters": {"type": "object", "properties": {},
                                                         "additionalProperties": False}}},
    ]
    assert [t["function"]["name"] for t in registry.openai_tools(["two", "search", "two"])] == ["two"]
    assert registry.openai_tools([]) == []
    with pytest.raises(InvalidRequestError) as info:
        registry.openai_tools(["one", "nope"])
    assert info.value.status_code == 422 and info.value.type == "unknown_tool"
    assert info.value.details["unknown"] == ["nope"]


def test_info_reports_availability() -> None:
    registry = ToolRegistry()
    tool = registry.register(lambda: 1, name="s", description="S.", available=False, unavailable_reason="why")
    assert tool.info() == {"name": "s", "description": "S.", "parameters": tool.parameters,
                           "available": False, "unavailable_reason": "why"}
    assert "s" in registry and registry.names() == ["s"]
