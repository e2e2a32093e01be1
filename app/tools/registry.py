"""The tool registry: Python functions (and configured HTTP calls) exposed as tools.

A tool's name, description and argument schema come from the function itself::

    registry = ToolRegistry()

    @registry.tool(timeout_s=2)
    def calculator(expression: Annotated[str, Field(description="e.g. '2 * (3 + 4)'")]) -> dict:
        \"\"\"Evaluate an arithmetic expression.\"\"\"

The docstring is the description, the type hints become a pydantic arguments model whose JSON
schema is what the model sees (OpenAI function ``parameters``), made by :mod:`app.json_schema`,
the generator signatures use too. Names are checked when a tool is registered, so a duplicate
fails at startup rather than when a model first calls it.

Tools report their own failures by raising :class:`ToolError` (the caller's input or an outside
service was at fault); any other exception is treated as a bug in the tool.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pydantic

from app.errors import InvalidRequestError, clean_errors, summarize_errors
from app.json_schema import model_json_schema

TOOL_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")  # what OpenAI accepts, minus a leading digit/dash


class ToolError(Exception):
    """Raised by a tool for a failure it understands; the message is shown to the caller and the model.

    ``type`` says whose fault it is (the router maps it to a status): ``tool_error`` (the input was
    wrong: division by zero, unknown time zone), ``tool_upstream_error`` (a service the tool calls
    failed), ``tool_timeout`` (that service did not answer in time). ``details`` are JSON values
    added to the error body.
    """

    def __init__(self, message: str, *, type: str = "tool_error", **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.type = type
        self.details = details


class ArgumentsError(Exception):
    """The arguments do not match the tool's schema. ``errors``: ``[{"loc", "msg", "type"}]``."""

    def __init__(self, message: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors


def find_in_arguments(value: Any, bad_value: Callable[[Any], bool],
                      bad_key: Callable[[Any], bool] | None = None) -> list[tuple[list[Any], Any]]:
    """``(loc, value)`` of what ``bad_value`` (and ``bad_key``, for keys) picks in JSON-like
    arguments, in document order; a bad key's value is not looked into. Walked without recursion,
    each location a linked (parent, part) chain spelled out only for what is found: however deep the
    arguments, no stack overflow and no quadratic path copies."""
    found: list[tuple[list[Any], Any]] = []
    stack: list[tuple[Any, Any, bool]] = [(None, value, False)]  # (where, item, its key is bad)
    while stack:
        where, item, key_bad = stack.pop()
        if key_bad or bad_value(item):
            loc: list[Any] = []
            while where is not None:
                where, part = where
                loc.append(part)
            found.append((loc[::-1], item))
        elif isinstance(item, dict):
            stack.extend(((where, k), v, bad_key is not None and bad_key(k)) for k, v in reversed(item.items()))
        elif isinstance(item, list | tuple):
            stack.extend(((where, i), v, False) for i, v in reversed(list(enumerate(item))))
    return found


Validator = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Tool:
    """A tool: its name, description, JSON schema, the function that runs it, and its availability."""
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments object
    func: Callable[..., Any]  # called as func(**validated_arguments); sync or async
    is_async: bool
    validate: Validator  # raw arguments -> keyword arguments for func; raises ArgumentsError
    timeout_s: float | None = None  # None: the executor's default
    available: bool = True
    unavailable_reason: str | None = None

    def openai(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry for this tool."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    def info(self) -> dict[str, Any]:
        """What ``GET /tools`` lists."""
        return {
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
            "available": self.available,
            "unavailable_reason": self.unavailable_reason,
        }


class ToolRegistry:
    """Tools by name. The app builds one per instance (see ``app.tools.build_tool_executor``)."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    # --- registration ----------------------------------------------------------

    def add(self, tool: Tool) -> Tool:
        """Add a tool (a bad or taken name is a ValueError); returns it."""
        if not TOOL_NAME_RE.match(tool.name):
            raise ValueError(f"invalid tool name {tool.name!r}: use letters, digits, '_' or '-' (at most 64)")
        if tool.name in self._tools:
            raise ValueError(f"tool {tool.name!r} is already registered")
        if not tool.description.strip():
            raise ValueError(f"tool {tool.name!r} has no description (the model needs one to use it)")
        if tool.timeout_s is not None and tool.timeout_s <= 0:
            raise ValueError(f"tool {tool.name!r}: timeout_s must be positive")
        if not tool.available and not tool.unavailable_reason:
            raise ValueError(f"tool {tool.name!r} is unavailable but gives no reason")
        self._tools[tool.name] = tool
        return tool

    def register(
        self,
        func: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout_s: float | None = None,
        available: bool = True,
        unavailable_reason: str | None = None,
    ) -> Tool:
        """Register a function as a tool; its schema comes from its signature and type hints."""
        name = name or func.__name__
        model = arguments_model(func, name)
        return self.add(
            Tool(
                name=name,
                description=description or inspect.getdoc(func) or "",
                parameters=model_json_schema(model),  # the one generator, shared with signatures
                func=func,
                is_async=inspect.iscoroutinefunction(func),
                validate=_pydantic_validator(model, name),
                timeout_s=timeout_s,
                available=available,
                unavailable_reason=unavailable_reason,
            )
        )

    def tool(
        self,
        name: str | None = None,
        *,
        description: str | None = None,
        timeout_s: float | None = None,
        available: bool = True,
        unavailable_reason: str | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator form of :meth:`register`; returns the function unchanged."""

        def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
            self.register(
                func, name=name, description=description, timeout_s=timeout_s,
                available=available, unavailable_reason=unavailable_reason,
            )
            return func

        return decorator

    # --- lookup ----------------------------------------------------------------

    def get(self, name: str) -> Tool | None:
        """A tool by name, or None."""
        return self._tools.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def names(self) -> list[str]:
        """The tools' names, in registration order."""
        return list(self._tools)

    def openai_tools(self, names: list[str] | None = None) -> list[dict[str, Any]]:
        """OpenAI ``tools`` entries for the available tools, all of them or those named.

        A name that is not registered is the caller's mistake: ``InvalidRequestError`` (422, type
        ``unknown_tool``). A named tool that is unavailable is left out, like an unnamed one.
        """
        if names is None:
            selected = list(self._tools.values())
        else:
            unknown = [n for n in names if n not in self._tools]
            if unknown:
                raise InvalidRequestError(
                    f"unknown tool(s): {', '.join(map(repr, unknown))}; available: {', '.join(self._tools)}",
                    type="unknown_tool",
                    unknown=unknown,
                )
            selected = [self._tools[n] for n in dict.fromkeys(names)]
        return [t.openai() for t in selected if t.available]


# --- schema from a signature ----------------------------------------------------


def arguments_model(func: Callable[..., Any], name: str) -> type[pydantic.BaseModel]:
    """A pydantic model of ``func``'s parameters (extra arguments are refused)."""
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception as exc:  # an unresolvable forward reference: fail at startup, not at call time
        raise TypeError(f"tool {name!r}: cannot resolve type hints: {exc}") from exc
    fields: dict[str, Any] = {}
    for param in inspect.signature(func).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise TypeError(f"tool {name!r}: parameter {param.name!r} must be passable by keyword")
        annotation = hints.get(param.name, Any)
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (annotation, default)
    return pydantic.create_model(
        f"{name}_arguments",
        __config__=pydantic.ConfigDict(extra="forbid"),
        **fields,
    )


def _pydantic_validator(model: type[pydantic.BaseModel], name: str) -> Validator:
    def validate(arguments: dict[str, Any]) -> dict[str, Any]:
        try:
            instance = model.model_validate(arguments)
        except pydantic.ValidationError as exc:
            errors = clean_errors(exc.errors(include_url=False, include_context=False, include_input=False))
            summary = summarize_errors(errors, root="(arguments)")
            raise ArgumentsError(f"invalid arguments for {name}: {summary}", errors) from None
        return {field: getattr(instance, field) for field in type(instance).model_fields}

    return validate


