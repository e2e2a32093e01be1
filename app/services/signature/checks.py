"""Limits, and the checks that enforce them: each check is one function here.

Two kinds of callers share them. The parser (string and JSON forms) calls a check as it reads,
and adds where it stands (column, field, section) to the error; the constructors of
:class:`~app.services.signature.types.TypeSpec`, ``Field`` and ``Signature`` call the same check
on whatever is built directly in code. A check therefore returns the problem as a message (or
``None``) and leaves raising to its caller; ``check_field_name`` and ``clean_text`` raise
themselves, for the callers that have no position to add.
"""

from __future__ import annotations

import builtins
import json
import keyword
import math
import re
from typing import Any

from app.errors import SignatureError
from app.json_schema import json_class

# --- limits -----------------------------------------------------------------

MAX_SIGNATURE_CHARS = 10_000  # the string form, whole
MAX_TYPE_CHARS = 1_000  # one type string in the JSON form
MAX_FIELDS = 100  # inputs + outputs
MAX_TYPE_DEPTH = 5  # nested brackets in one type: list[list[list[list[list[str]]]]]
MAX_LITERAL_VALUES = 256
MAX_NAME_CHARS = 100
MAX_DESC_CHARS = 4_000
MAX_INSTRUCTIONS_CHARS = 32_000
MAX_OBJECT_TYPES = 32  # named object types in one signature's "types" section
MAX_OBJECT_DEPTH = 4  # object types nested in object types: A has a B, which has a C, which has a D
# the JSON form as a whole (its object types multiply what MAX_FIELDS and MAX_TYPE_CHARS allow): every
# field, of the inputs, outputs and object types together, and the text of all their types
MAX_TOTAL_FIELDS = 400
MAX_TOTAL_TYPE_CHARS = 100_000  # what the inputs and outputs alone allow (MAX_FIELDS * MAX_TYPE_CHARS)
MAX_PATTERN_CHARS = 512  # one "pattern" constraint
MAX_PATTERN_REPEAT = 1_000  # a pattern's counted repetitions, expanded: [a-z]{1,50}@[a-z]{1,50} is 101
MAX_CONSTRAINT_COUNT = 100_000  # min/max_length, min/max_items

# budgets of the output schema, which vLLM compiles into a grammar (with no timeout) for every new one
MAX_SCHEMA_BYTES = 65_536  # the compact JSON text of the schema
MAX_SCHEMA_DEPTH = 16  # schema nodes nested in one another ($ref followed), the root object being 1
MAX_UNION_WIDTH = 8  # branches of one anyOf (Union[...], Optional adds the null branch)
# xgrammar expands a string's length bounds into the grammar (about a second per 50 characters of bound
# measured, each distinct bound again): longer bounds are validated, not put in the schema
MAX_SCHEMA_STRING_LENGTH = 32

NO_OUTPUTS = "no output fields"

LiteralValue = str | int | float | bool

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RESERVED_TYPE_NAMES = frozenset(("None", "True", "False", "true", "false", "Union", "Any", "Optional", "optional",
                                  "Literal", "List", "Dict", "Tuple", *dir(builtins)))


# --- field names ---------------------------------------------------------------


def field_name_problem(name: Any) -> str | None:
    """Why ``name`` cannot name a field (not a string, too long, not an identifier, a keyword), or None."""
    if not isinstance(name, str):
        return f"field name must be a string, not {type(name).__name__}"
    if len(name) > MAX_NAME_CHARS:
        return f"field name {name[:20]!r}... is too long (max {MAX_NAME_CHARS} chars)"
    if not _NAME_RE.fullmatch(name):
        return f"invalid field name {name!r}: use letters, digits and '_', not starting with a digit"
    if keyword.iskeyword(name):
        return f"invalid field name {name!r}: it is a Python keyword"
    return None


def field_detail(name: Any) -> dict[str, str]:
    """The ``field`` error detail for a (possibly bad) name: at most MAX_NAME_CHARS of it."""
    return {"field": name[:MAX_NAME_CHARS]} if isinstance(name, str) else {}


def check_field_name(name: Any) -> str:
    """The name if it is a valid field name; else a SignatureError saying why."""
    problem = field_name_problem(name)
    if problem is not None:
        raise SignatureError(problem, **field_detail(name))
    return name  # type: ignore[no-any-return]


class FieldNames:
    """The field names of one signature (inputs and outputs together), added one by one: the one
    place that refuses a duplicate name and counts fields against MAX_FIELDS."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def add(self, name: str) -> str | None:
        """Add ``name``; or, when it is already there, say so."""
        if name in self._seen:
            return f"duplicate field {name!r}"
        self._seen.add(name)
        return None

    def too_many(self) -> str | None:
        """A message if more than MAX_FIELDS fields were seen, else None."""
        n = len(self._seen)
        return f"too many fields ({n}; max {MAX_FIELDS})" if n > MAX_FIELDS else None


# --- object type names ----------------------------------------------------------


def type_name_problem(name: Any) -> str | None:
    """Why ``name`` cannot name an object type (as for a field, and no type or builtin name), or None."""
    problem = field_name_problem(name)
    if problem is not None:
        return problem.replace("field name", "type name")
    if name in _RESERVED_TYPE_NAMES:
        return f"invalid type name {name!r}: it would shadow a built-in name"
    return None


# --- texts ---------------------------------------------------------------------


def clean_text(value: Any, *, what: str, limit: int, field: str | None = None) -> str | None:
    """A description or instructions: None, or a string of at most ``limit`` chars once stripped
    (empty becomes None)."""
    if value is None:
        return None
    details = {"field": field} if field else {}
    if not isinstance(value, str):
        raise SignatureError(f"{what} must be a string, not {type(value).__name__}", **details)
    value = value.strip()
    if len(value) > limit:
        raise SignatureError(f"{what} is too long ({len(value)} chars; max {limit})", **details)
    problem = unicode_problem(value, what)
    if problem is not None:
        raise SignatureError(problem, **details)
    return value or None


def unicode_problem(text: str, what: str) -> str | None:
    """Whether ``text`` holds a lone surrogate (JSON may spell one, ``"\\ud800"``), which no UTF-8
    encoder (the schema's, the upstream request's) nor pydantic's Literal can take; or None."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return f"{what} holds a lone surrogate, which is not valid Unicode"
    return None


# --- types -----------------------------------------------------------------------


def nesting_problem(depth: int) -> str | None:
    """``depth``: brackets open around a type (``list[list[str]]`` is 2)."""
    return f"type nesting is too deep (max {MAX_TYPE_DEPTH} levels)" if depth > MAX_TYPE_DEPTH else None


def literal_text(value: LiteralValue) -> str:
    """The canonical spelling of a Literal value: ``"a"`` (JSON quoting), ``1``, ``2.5``, ``True``."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def literal_key(value: LiteralValue) -> tuple[str, Any]:
    """Identity of a Literal value: by JSON class and value, so ``1`` and ``1.0`` are the same
    value and ``1`` and ``True`` are not."""
    return (json_class(value), value)


class LiteralValues:
    """The values of one ``Literal[...]``, added one by one: the one place that refuses a value
    that is not a string, number or boolean, not finite, a duplicate, or one too many."""

    def __init__(self) -> None:
        self.values: list[LiteralValue] = []
        self._keys: set[tuple[str, Any]] = set()

    def add(self, value: Any, *, shown: str | None = None) -> str | None:
        """Add ``value``; or say why not. ``shown``: how the caller's text spells it (for the message)."""
        if not isinstance(value, (str, int, float)):  # bool is an int
            return f"Literal values must be strings, numbers or booleans, not {type(value).__name__}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"Literal value {value!r} is not a finite number"
        if isinstance(value, str) and (problem := unicode_problem(value, "a Literal value")) is not None:
            return problem
        key = literal_key(value)
        if key in self._keys:
            return f"duplicate Literal value {literal_text(value) if shown is None else shown}"
        if len(self.values) >= MAX_LITERAL_VALUES:
            return f"Literal has too many values (max {MAX_LITERAL_VALUES})"
        self._keys.add(key)
        self.values.append(value)
        return None


# --- the output schema's budget ----------------------------------------------------


def schema_budget_problem(schema: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """Whether ``schema`` is past a budget (size, union width, depth): the message naming the limit
    and the value, and the error details (``limit``, ``max``, ``value``); or None."""
    size = len(json.dumps(schema, separators=(",", ":"), ensure_ascii=False).encode())
    depth, width = _measure(schema, schema.get("$defs") or {}, 1)
    for limit, maximum, value, what in (
        ("MAX_SCHEMA_BYTES", MAX_SCHEMA_BYTES, size, f"the output schema is {size} bytes of JSON"),
        ("MAX_UNION_WIDTH", MAX_UNION_WIDTH, width, f"a union in the output schema has {width} branches"),
        ("MAX_SCHEMA_DEPTH", MAX_SCHEMA_DEPTH, depth, f"the output schema nests {depth} levels deep"),
    ):
        if value > maximum:
            message = f"{what}; the limit ({limit}) is {maximum}: vLLM compiles each new schema into a grammar"
            return message, {"limit": limit, "max": maximum, "value": value}
    return None


def _measure(node: Any, defs: dict[str, Any], level: int) -> tuple[int, int]:
    """(deepest level, widest anyOf) under ``node``, at ``level``; a ``$ref`` is followed into ``defs``.
    Signatures have no recursive types, so this ends; ``level`` is capped all the same."""
    if not isinstance(node, dict) or level > 4 * MAX_SCHEMA_DEPTH:
        return level, 0
    children: list[Any] = []
    width = 0
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        children.append(defs.get(ref[len("#/$defs/"):]))
        level -= 1  # the reference is the node it names, not a level of its own
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            children.append(node[key])
    for key in ("anyOf", "prefixItems"):
        if isinstance(node.get(key), list):
            children.extend(node[key])
    if isinstance(node.get("anyOf"), list):
        width = len(node["anyOf"])
    if isinstance(node.get("properties"), dict):
        children.extend(node["properties"].values())
    depth = level
    for child in children:
        d, w = _measure(child, defs, level + 1)
        depth, width = max(depth, d), max(width, w)
    return depth, width
