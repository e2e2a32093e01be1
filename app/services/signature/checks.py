"""Limits, and the checks of names, texts and literal values that the model and the parser share."""

from __future__ import annotations

import json
import keyword
import re
from typing import Any

from app.errors import SignatureError

# --- limits -----------------------------------------------------------------

MAX_SIGNATURE_CHARS = 10_000  # the string form, whole
MAX_TYPE_CHARS = 1_000  # one type string in the JSON form
MAX_FIELDS = 100  # inputs + outputs
MAX_TYPE_DEPTH = 5  # nested brackets in one type: list[list[list[list[list[str]]]]]
MAX_LITERAL_VALUES = 256
MAX_NAME_CHARS = 100
MAX_DESC_CHARS = 4_000
MAX_INSTRUCTIONS_CHARS = 32_000

LiteralValue = str | int | float | bool

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# --- names and texts -------------------------------------------------------------


def check_field_name(name: Any, *, what: str = "field name") -> str:
    if not isinstance(name, str):
        raise SignatureError(f"{what} must be a string, not {type(name).__name__}")
    if len(name) > MAX_NAME_CHARS:
        raise SignatureError(
            f"{what} {name[:20]!r}... is too long (max {MAX_NAME_CHARS} chars)", field=name[:MAX_NAME_CHARS]
        )
    if not _NAME_RE.fullmatch(name):
        raise SignatureError(
            f"invalid {what} {name!r}: use letters, digits and '_', not starting with a digit", field=name
        )
    if keyword.iskeyword(name):
        raise SignatureError(f"invalid {what} {name!r}: it is a Python keyword", field=name)
    return name


def clean_text(value: Any, *, what: str, limit: int, field: str | None = None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        details = {"field": field} if field else {}
        raise SignatureError(f"{what} must be a string, not {type(value).__name__}", **details)
    value = value.strip()
    if len(value) > limit:
        details = {"field": field} if field else {}
        raise SignatureError(f"{what} is too long ({len(value)} chars; max {limit})", **details)
    return value or None


# --- literal values (their JSON class is app.json_schema.json_class) -----------------


def literal_text(value: LiteralValue) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)
