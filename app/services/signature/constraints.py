"""Constraints on a field, as DSPy's ``OutputField`` has them: keys of the field's spec in the JSON form.

``{"type": "int", "ge": 1, "le": 5}``; ``ge``, ``gt``, ``le``, ``lt`` for numbers, ``min_length``,
``max_length``, ``pattern`` for strings, ``min_items``, ``max_items`` for lists. A constraint applies
to the field's type inside ``Optional`` (``None`` stays allowed); one that does not fit the type
(``pattern`` on an ``int``) is refused. Each is validated by pydantic, always, and emitted in the
JSON schema where vLLM's grammar can enforce it: xgrammar drops length bounds next to a ``pattern``
(vLLM then refuses the schema or falls back), so a string with a pattern carries only the pattern
in its schema, and its lengths are checked by validation alone.

A pattern is compiled by pydantic's regex engine (Rust's ``regex``: linear-time matching, no
look-around or back-references, a bounded compiled size); one it refuses is a 422. It matches
anywhere in the string, as JSON Schema's ``pattern`` does: anchor it with ``^...$`` to match the whole.
Its counted repetitions (``{n}``, ``{n,m}``), expanded as the grammar expands them (nested ones
multiply), are bounded by MAX_PATTERN_REPEAT.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any, Optional

from pydantic import Field as PydanticField
from pydantic import TypeAdapter

from app.errors import SignatureError
from app.services.signature.checks import (
    MAX_CONSTRAINT_COUNT,
    MAX_PATTERN_CHARS,
    MAX_PATTERN_REPEAT,
    MAX_SCHEMA_STRING_LENGTH,
    unicode_problem,
)

if TYPE_CHECKING:
    from app.services.signature.types import TypeSpec

NUMBER_KEYS = ("ge", "gt", "le", "lt")
STRING_KEYS = ("min_length", "max_length", "pattern")
LIST_KEYS = ("min_items", "max_items")
CONSTRAINT_KEYS = (*NUMBER_KEYS, *STRING_KEYS, *LIST_KEYS)
_FITS = {"ge": "number", "gt": "number", "le": "number", "lt": "number", "min_length": "string",
         "max_length": "string", "pattern": "string", "min_items": "list", "max_items": "list"}
_KINDS = {"number": ("int", "float"), "string": ("str",), "list": ("list",)}
_WORDS = {"ge": "at least {}", "gt": "greater than {}", "le": "at most {}", "lt": "less than {}",
          "min_length": "at least {} characters", "max_length": "at most {} characters",
          "pattern": "matching the pattern {}", "min_items": "at least {} items", "max_items": "at most {} items"}


@dataclass(frozen=True)
class Constraints:
    """The constraints of one field; all ``None`` when it has none (falsy then)."""

    ge: int | float | None = None
    gt: int | float | None = None
    le: int | float | None = None
    lt: int | float | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    min_items: int | None = None
    max_items: int | None = None

    def __post_init__(self) -> None:
        for key, value in self.items():
            problem = _value_problem(key, value)
            if problem is not None:
                raise SignatureError(problem)
            if isinstance(value, float) and value.is_integer():
                # one spelling per bound: ``ge=1.0`` equals ``ge=1`` (and keys the same caches), so both
                # must make the same schema bytes and prompt text (``-0.0`` is ``0`` too)
                object.__setattr__(self, key, int(value))
        for low, high in (("ge", "le"), ("gt", "lt"), ("ge", "lt"), ("gt", "le"),
                          ("min_length", "max_length"), ("min_items", "max_items")):
            lo, hi = getattr(self, low), getattr(self, high)
            strict = low == "gt" or high == "lt"
            if lo is not None and hi is not None and (lo > hi or (lo == hi and strict)):
                raise SignatureError(f"constraints {low}={lo} and {high}={hi} leave no value")

    def __bool__(self) -> bool:
        return any(True for _ in self.items())

    def items(self) -> list[tuple[str, Any]]:
        """The constraints that are set, in the canonical order of :data:`CONSTRAINT_KEYS`."""
        return [(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None]

    def describe(self) -> str | None:
        """For a prompt: ``at least 1, at most 5``, ``matching the pattern ^a$``; None without any."""
        parts = [_WORDS[key].format(value) for key, value in self.items()]
        parts = [p[:-1] if p.startswith(("at least 1 ", "at most 1 ")) and p.endswith("s") else p for p in parts]
        return ", ".join(parts) or None

    def fit_problem(self, spec: TypeSpec) -> str | None:
        """Why a constraint does not fit ``spec`` (looked at inside Optional), or None."""
        base = spec.args[0] if spec.kind == "optional" else spec
        for key, _ in self.items():
            wanted = _FITS[key]
            if base.kind not in _KINDS[wanted]:
                return f"constraint {key!r} needs a {wanted} type ({'/'.join(_KINDS[wanted])}), not '{spec}'"
        for key in NUMBER_KEYS:  # pydantic refuses to build these validators (a 500, not a 422)
            value = getattr(self, key)
            if value is None:
                continue
            if base.kind == "int" and isinstance(value, float) and not value.is_integer():
                return f"constraint {key!r} must be a whole number for an int field, not {value!r}"
            if isinstance(value, int) and abs(value) > sys.float_info.max:  # int fields too: the error message
                return f"constraint {key!r} is out of range (at most {sys.float_info.max:g} either way)"
        return None

    def pydantic_kwargs(self, *, for_schema: bool = False) -> dict[str, Any]:
        """pydantic ``Field`` keywords. ``for_schema``: what the JSON schema may carry (no string
        length bounds beside a pattern or past MAX_SCHEMA_STRING_LENGTH)."""
        out: dict[str, Any] = {}
        for key, value in self.items():
            if key in ("min_length", "max_length") and for_schema and (
                self.pattern is not None or value > MAX_SCHEMA_STRING_LENGTH
            ):
                continue
            out[{"min_items": "min_length", "max_items": "max_length"}.get(key, key)] = value
        return out

    def apply(self, spec: TypeSpec, annotation: Any, inner: Any, *, for_schema: bool = False) -> Any:
        """``annotation`` (of ``spec``) with the constraints on the type inside Optional: ``inner`` is
        the annotation of that inner type (``spec.args[0]``) when ``spec`` is Optional."""
        if not self:
            return annotation
        kwargs = self.pydantic_kwargs(for_schema=for_schema)
        if not kwargs:
            return annotation
        if spec.kind == "optional":
            return Optional[Annotated[inner, PydanticField(**kwargs)]]  # noqa: UP007
        return Annotated[annotation, PydanticField(**kwargs)]


def _value_problem(key: str, value: Any) -> str | None:
    if key in NUMBER_KEYS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"constraint {key!r} must be a number, not {type(value).__name__}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"constraint {key!r} must be a finite number"
        return None
    if key == "pattern":
        if not isinstance(value, str):
            return f"constraint 'pattern' must be a string, not {type(value).__name__}"
        if len(value) > MAX_PATTERN_CHARS:
            return f"pattern is too long ({len(value)} chars; max {MAX_PATTERN_CHARS})"
        return unicode_problem(value, "pattern") or _pattern_problem(value) or _repeat_problem(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return f"constraint {key!r} must be an integer, not {type(value).__name__}"
    if not 0 <= value <= MAX_CONSTRAINT_COUNT:
        return f"constraint {key!r} must be between 0 and {MAX_CONSTRAINT_COUNT}, not {value}"
    return None


@lru_cache(maxsize=256)
def _pattern_problem(pattern: str) -> str | None:
    """Compiled by the engine that will validate it (pydantic's): its refusal, or None."""
    try:
        TypeAdapter(Annotated[str, PydanticField(pattern=pattern)])
    except Exception as exc:  # pydantic_core.SchemaError, or re.error with the python-re engine
        reason = " ".join(str(exc).split())
        reason = reason.split("SchemaError: ")[-1][:200]
        return f"invalid pattern {pattern[:60]!r}: {reason}"
    return None


_QUANTIFIER = re.compile(r"\{(\d+)(,(\d*))?\}")


def pattern_repeat(pattern: str) -> int:
    """How many atoms ``pattern`` is once its counted repetitions are expanded (the largest
    alternative of each group; ``*``, ``+`` and ``?`` are loops or options and add nothing)."""
    groups: list[list[int]] = [[0]]  # per open group: the cost of each alternative so far
    last = 0  # the cost of the atom or group a quantifier would repeat
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            if i <= len(pattern) and pattern[i - 1] in "pPxu" and i < len(pattern) and pattern[i] == "{":
                i = pattern.find("}", i) + 1 or len(pattern)  # \p{L}, \x{2603}
            last = 1
        elif c == "[":
            i = _class_end(pattern, i)
            last = 1
        elif c == "(":
            groups.append([0])
            i, last = i + 1, 0
            continue
        elif c == ")" and len(groups) > 1:
            last = max(groups.pop())
            groups[-1][-1] += last
            i += 1
            continue
        elif c == "|":
            groups[-1].append(0)
            i, last = i + 1, 0
            continue
        elif c == "{" and (m := _QUANTIFIER.match(pattern, i)):
            low, comma, high = int(m.group(1)), m.group(2), m.group(3)
            times = int(high) if comma and high else low
            groups[-1][-1] += last * (max(times, 1) - 1)
            last *= max(times, 1)
            i = m.end()
            if groups[-1][-1] > 10 * MAX_PATTERN_REPEAT:
                break
            continue
        elif c in "*+?^$":
            i += 1
            continue
        else:
            i += 1
            last = 1
        groups[-1][-1] += last
    return max(max(g) for g in groups)


def _class_end(pattern: str, i: int) -> int:
    """The index after the character class that opens at ``i`` (``[]a]`` and ``[^]a]`` included)."""
    j = i + 1
    if j < len(pattern) and pattern[j] == "^":
        j += 1
    if j < len(pattern) and pattern[j] == "]":
        j += 1
    while j < len(pattern) and pattern[j] != "]":
        j += 2 if pattern[j] == "\\" else 1
    return j + 1


def _repeat_problem(pattern: str) -> str | None:
    n = pattern_repeat(pattern)
    if n > MAX_PATTERN_REPEAT:
        return (
            f"pattern {pattern[:60]!r} repeats too much ({n} atoms once its counted repetitions are "
            f"expanded; max {MAX_PATTERN_REPEAT}): vLLM compiles it into the grammar"
        )
    return None


def constraints_from_spec(spec: dict[str, Any], *, field: str) -> Constraints:
    """The constraint keys of a field's JSON spec; SignatureError naming the field."""
    values = {k: spec[k] for k in CONSTRAINT_KEYS if k in spec}
    try:
        return Constraints(**values)
    except SignatureError as exc:
        raise SignatureError(f"{exc.message} for field {field!r}", field=field) from None
