"""Signatures: the typed input/output contract of a prediction, in DSPy's syntax.

Two forms are accepted::

    "context: list[str], question: str -> answer: str, confidence: float"

    {"instructions": "Answer from the context.",
     "inputs": {"context": {"type": "list[str]", "desc": "passages"}, "question": "str"},
     "outputs": {"answer": {"type": "str"}, "confidence": "float"}}

A field without a type is ``str``. Types come from a whitelist (:data:`ALLOWED_TYPES`):
``str``, ``int``, ``float``, ``bool``, ``list[T]``, ``dict[str, T]``, ``Literal[...]`` (string,
int, float and bool values) and ``Optional[T]`` (also ``optional[T]``, ``T | None``); ``List``
and ``Dict`` are accepted aliases. Type text is tokenized and parsed by a small recursive-descent
parser here; nothing from a request is ever imported or evaluated.

The parsed :class:`Signature` is immutable and hashable, so it can key caches. It builds the
JSON schema handed to vLLM's structured outputs, validates request inputs (422 on a mismatch)
and validates the model's JSON reply into the declared Python types.

Validation is pydantic's lax mode (``"3"`` for an ``int`` becomes ``3``, ``"three"`` fails) with
one exception: a JSON boolean is never accepted as a number (or a number as a boolean literal),
because ``true`` for ``confidence: float`` is a wrong answer, not a spelling of ``1.0``.
"""

from __future__ import annotations

import json
import keyword
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dc_field
from functools import lru_cache
from typing import Annotated, Any, Literal, Optional

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainValidator,
    ValidationError,
    create_model,
)
from pydantic import Field as PydanticField
from pydantic_core import PydanticCustomError

from app.errors import InvalidRequestError, OutputValidationError, SignatureError, clean_errors, summarize_errors

__all__ = [
    "ALLOWED_TYPES",
    "MAX_FIELDS",
    "MAX_SIGNATURE_CHARS",
    "MAX_TYPE_DEPTH",
    "REASONING_DESC",
    "REASONING_FIELD",
    "Field",
    "Signature",
    "TypeSpec",
    "parse_signature",
    "parse_signature_cached",
    "parse_type",
]

# --- limits -----------------------------------------------------------------

MAX_SIGNATURE_CHARS = 10_000  # the string form, whole
MAX_TYPE_CHARS = 1_000  # one type string in the JSON form
MAX_FIELDS = 100  # inputs + outputs
MAX_TYPE_DEPTH = 5  # nested brackets in one type: list[list[list[list[list[str]]]]]
MAX_LITERAL_VALUES = 256
MAX_NAME_CHARS = 100
MAX_DESC_CHARS = 4_000
MAX_INSTRUCTIONS_CHARS = 32_000

ALLOWED_TYPES = "str, int, float, bool, list[T], dict[str, T], Literal[...], Optional[T]"

REASONING_FIELD = "reasoning"
REASONING_DESC = "Think step by step in order to produce the output fields that follow."

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

Kind = Literal["str", "int", "float", "bool", "list", "dict", "literal", "optional"]
LiteralValue = str | int | float | bool

_SCALARS: dict[str, str] = {"str": "str", "int": "int", "float": "float", "bool": "bool"}
_LIST_NAMES = frozenset({"list", "List"})
_DICT_NAMES = frozenset({"dict", "Dict"})
_OPTIONAL_NAMES = frozenset({"Optional", "optional"})
_LITERAL_NAMES = frozenset({"Literal"})
_BOOL_WORDS = {"true": True, "false": False, "True": True, "False": False}


# --- the model ----------------------------------------------------------------


def _literal_class(value: Any) -> str:
    """JSON type class of a literal value: bools are not numbers, ints and floats are one class."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "string"


def _literal_text(value: LiteralValue) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


@dataclass(frozen=True, eq=False)
class TypeSpec:
    """One whitelisted type.

    ``args`` by kind: scalars ``()``; ``list`` ``(item,)``; ``dict`` ``(value,)`` (keys are always
    ``str``); ``optional`` ``(inner,)``; ``literal`` the allowed values (str, int, float, bool).
    Equality and hashing go by the canonical text, so ``Literal[1]`` and ``Literal[True]`` differ.
    """

    kind: Kind
    args: tuple[Any, ...] = ()
    _text: str = dc_field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "args", tuple(self.args))
        kind, args = self.kind, self.args
        if kind in _SCALARS:
            if args:
                raise SignatureError(f"type '{kind}' takes no arguments")
            text = kind
        elif kind in ("list", "dict", "optional"):
            if len(args) != 1 or not isinstance(args[0], TypeSpec):
                raise SignatureError(f"type '{kind}' takes exactly one TypeSpec argument")
            inner = args[0]
            if kind == "optional" and inner.kind == "optional":
                raise SignatureError("Optional[Optional[T]] must be written Optional[T]")
            text = {"list": f"list[{inner}]", "dict": f"dict[str, {inner}]", "optional": f"Optional[{inner}]"}[kind]
        elif kind == "literal":
            if not args:
                raise SignatureError("Literal needs at least one value")
            if len(args) > MAX_LITERAL_VALUES:
                raise SignatureError(f"Literal has too many values ({len(args)}; max {MAX_LITERAL_VALUES})")
            seen: set[tuple[str, Any]] = set()
            for value in args:
                if not isinstance(value, (str, int, float)):  # bool is an int
                    raise SignatureError(
                        f"Literal values must be strings, numbers or booleans, not {type(value).__name__}"
                    )
                if isinstance(value, float) and not math.isfinite(value):
                    raise SignatureError(f"Literal value {value!r} is not a finite number")
                key = (_literal_class(value), value)
                if key in seen:
                    raise SignatureError(f"duplicate Literal value {_literal_text(value)}")
                seen.add(key)
            text = "Literal[" + ", ".join(_literal_text(v) for v in args) + "]"
        else:
            raise SignatureError(f"unknown type kind {kind!r}")
        if self.depth > MAX_TYPE_DEPTH:
            raise SignatureError(f"type nesting is too deep (max {MAX_TYPE_DEPTH} levels): {text}")
        object.__setattr__(self, "_text", text)

    # -- constructors --------------------------------------------------------

    @classmethod
    def scalar(cls, name: str) -> TypeSpec:
        return cls(name)  # type: ignore[arg-type]

    @classmethod
    def list_of(cls, item: TypeSpec) -> TypeSpec:
        return cls("list", (item,))

    @classmethod
    def dict_of(cls, value: TypeSpec) -> TypeSpec:
        return cls("dict", (value,))

    @classmethod
    def optional(cls, inner: TypeSpec) -> TypeSpec:
        return inner if inner.kind == "optional" else cls("optional", (inner,))

    @classmethod
    def literal(cls, *values: LiteralValue) -> TypeSpec:
        return cls("literal", values)

    # -- identity ------------------------------------------------------------

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"TypeSpec({self._text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TypeSpec) and other._text == self._text

    def __hash__(self) -> int:
        return hash(("TypeSpec", self._text))

    @property
    def is_optional(self) -> bool:
        return self.kind == "optional"

    @property
    def depth(self) -> int:
        """Bracket nesting: 0 for scalars, 1 for ``list[str]`` or ``Literal[...]``."""
        if self.kind in _SCALARS:
            return 0
        if self.kind == "literal":
            return 1
        return 1 + self.args[0].depth

    # -- conversions ----------------------------------------------------------

    def to_annotation(self) -> Any:
        """The plain Python type: ``str``, ``list[str]``, ``dict[str, int]``, ``Literal['a', 1]``,
        ``Optional[int]``. Built from the parsed spec, never from text."""
        kind = self.kind
        if kind == "str":
            return str
        if kind == "int":
            return int
        if kind == "float":
            return float
        if kind == "bool":
            return bool
        if kind == "list":
            return list[self.args[0].to_annotation()]  # type: ignore[misc]
        if kind == "dict":
            return dict[str, self.args[0].to_annotation()]  # type: ignore[misc]
        if kind == "optional":
            return Optional[self.args[0].to_annotation()]  # noqa: UP007
        return Literal[self.args]  # type: ignore[valid-type]

    def to_json_schema(self) -> dict[str, Any]:
        """A JSON schema without ``$ref``: ``enum`` for Literal, ``anyOf`` with null for Optional."""
        kind = self.kind
        if kind == "str":
            return {"type": "string"}
        if kind == "int":
            return {"type": "integer"}
        if kind == "float":
            return {"type": "number"}
        if kind == "bool":
            return {"type": "boolean"}
        if kind == "list":
            return {"type": "array", "items": self.args[0].to_json_schema()}
        if kind == "dict":
            return {"type": "object", "additionalProperties": self.args[0].to_json_schema()}
        if kind == "optional":
            return {"anyOf": [self.args[0].to_json_schema(), {"type": "null"}]}
        schema: dict[str, Any] = {"enum": list(self.args)}
        classes = {_literal_class(v) for v in self.args}
        if classes == {"number"}:
            schema["type"] = "integer" if all(isinstance(v, int) for v in self.args) else "number"
        elif len(classes) == 1:
            schema["type"] = classes.pop()
        return schema

    def _validation_annotation(self) -> Any:
        """Like :meth:`to_annotation`, with booleans refused where numbers are expected."""
        kind = self.kind
        if kind in ("int", "float"):
            return Annotated[self.to_annotation(), BeforeValidator(_refuse_bool(kind))]
        if kind == "list":
            return list[self.args[0]._validation_annotation()]  # type: ignore[misc]
        if kind == "dict":
            return dict[str, self.args[0]._validation_annotation()]  # type: ignore[misc]
        if kind == "optional":
            return Optional[self.args[0]._validation_annotation()]  # noqa: UP007
        if kind == "literal":
            return Annotated[self.to_annotation(), PlainValidator(_literal_matcher(self))]
        return self.to_annotation()


def _refuse_bool(kind: str) -> Any:
    label = "an integer" if kind == "int" else "a number"

    def check(value: Any) -> Any:
        if isinstance(value, bool):
            raise PydanticCustomError(f"{kind}_type", f"Input should be {label}, not a boolean")
        return value

    return check


def _literal_matcher(spec: TypeSpec) -> Any:
    """Exact Literal matching by JSON type class and value: ``1`` never matches ``True`` (pydantic's
    own Literal validator would turn ``1`` into ``True`` when both are allowed); ``1.0`` matches ``1``.
    Returns the declared value."""
    allowed = spec.args
    expected = ", ".join(_literal_text(v) for v in allowed)

    def check(value: Any) -> Any:
        if isinstance(value, (str, int, float)):
            cls = _literal_class(value)
            for candidate in allowed:
                if _literal_class(candidate) == cls and candidate == value:
                    return candidate
        raise PydanticCustomError("literal_error", "Input should be one of: {expected}", {"expected": expected})

    return check


def _check_name(name: Any, *, what: str = "field name") -> str:
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


def _clean_text(value: Any, *, what: str, limit: int, field: str | None = None) -> str | None:
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


@dataclass(frozen=True)
class Field:
    """One input or output field."""

    name: str
    type: TypeSpec = dc_field(default_factory=lambda: TypeSpec("str"))
    desc: str | None = None

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not isinstance(self.type, TypeSpec):
            raise SignatureError(f"type of field {self.name!r} must be a TypeSpec", field=self.name)
        desc = _clean_text(self.desc, what=f"desc of field {self.name!r}", limit=MAX_DESC_CHARS, field=self.name)
        object.__setattr__(self, "desc", desc)

    def __str__(self) -> str:
        return f"{self.name}: {self.type}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": str(self.type)}
        if self.desc is not None:
            out["desc"] = self.desc
        return out


@dataclass(frozen=True, kw_only=True)
class Signature:
    """Immutable, hashable. Build one with :func:`parse_signature`."""

    instructions: str | None = None
    inputs: tuple[Field, ...] = ()
    outputs: tuple[Field, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(
            self, "instructions", _clean_text(self.instructions, what="instructions", limit=MAX_INSTRUCTIONS_CHARS)
        )
        seen: set[str] = set()
        for f in (*self.inputs, *self.outputs):
            if not isinstance(f, Field):
                raise SignatureError(f"signature fields must be Field objects, not {type(f).__name__}")
            if f.name in seen:
                raise SignatureError(f"duplicate field {f.name!r}", field=f.name)
            seen.add(f.name)
        if not self.outputs:
            raise SignatureError("no output fields")
        if len(seen) > MAX_FIELDS:
            raise SignatureError(f"too many fields ({len(seen)}; max {MAX_FIELDS})")

    # -- views ---------------------------------------------------------------

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.outputs)

    def __str__(self) -> str:
        """Canonical text, e.g. ``context: list[str], question: str -> answer: str``.
        Parses back to the same fields (descriptions and instructions are not part of it)."""
        ins = ", ".join(str(f) for f in self.inputs)
        outs = ", ".join(str(f) for f in self.outputs)
        return f"{ins} -> {outs}" if ins else f"-> {outs}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form; ``parse_signature(sig.to_dict()) == sig``."""
        return {
            "instructions": self.instructions,
            "inputs": {f.name: f.to_dict() for f in self.inputs},
            "outputs": {f.name: f.to_dict() for f in self.outputs},
        }

    # -- derived signatures ----------------------------------------------------

    def with_instructions(self, instructions: str | None) -> Signature:
        return Signature(instructions=instructions, inputs=self.inputs, outputs=self.outputs)

    def with_reasoning(self) -> Signature:
        """Chain of thought: the same signature with a ``reasoning: str`` output first."""
        clash = next((f for f in (*self.inputs, *self.outputs) if f.name == REASONING_FIELD), None)
        if clash is not None:
            where = "an input" if clash in self.inputs else "an output"
            raise SignatureError(
                f"chain of thought adds an output field {REASONING_FIELD!r}, but the signature already "
                f"has {where} named {REASONING_FIELD!r}; rename it",
                field=REASONING_FIELD,
            )
        reasoning = Field(REASONING_FIELD, TypeSpec("str"), REASONING_DESC)
        return Signature(instructions=self.instructions, inputs=self.inputs, outputs=(reasoning, *self.outputs))

    # -- schemas -------------------------------------------------------------

    def output_json_schema(self) -> dict[str, Any]:
        """Object schema for structured outputs: properties in order, all required, no extras."""
        return _object_schema(self.outputs)

    def input_json_schema(self) -> dict[str, Any]:
        """Same shape for the inputs (for listings and clients); Optional inputs are not required."""
        schema = _object_schema(self.inputs)
        schema["required"] = [f.name for f in self.inputs if not f.type.is_optional]
        return schema

    # -- validation ------------------------------------------------------------

    def validate_inputs(self, inputs: Any) -> dict[str, Any]:
        """Check and coerce request inputs. Optional inputs may be left out (they become None).

        Raises InvalidRequestError (422) naming missing/extra fields, or with pydantic's errors."""
        if not isinstance(inputs, Mapping):
            raise InvalidRequestError(
                f"inputs must be an object with the fields {list(self.input_names)}, not {type(inputs).__name__}",
                expected=list(self.input_names),
            )
        names = set(self.input_names)
        missing = [f.name for f in self.inputs if f.name not in inputs and not f.type.is_optional]
        extra = [k for k in inputs if k not in names]
        if missing or extra:
            parts = []
            if missing:
                parts.append("missing input field(s): " + ", ".join(repr(n) for n in missing))
            if extra:
                parts.append("unknown input field(s): " + ", ".join(repr(str(n)) for n in extra))
            raise InvalidRequestError(
                "; ".join(parts) + f" (expected: {', '.join(self.input_names) or 'none'})",
                missing=missing,
                extra=[str(n) for n in extra],
                expected=list(self.input_names),
            )
        model = _fields_model(_model_key(self.inputs), "SignatureInputs")
        try:
            validated = model.model_validate(dict(inputs))
        except ValidationError as exc:
            errors = clean_errors(exc.errors(include_url=False, include_context=False, include_input=False))
            raise InvalidRequestError("invalid inputs: " + summarize_errors(errors), errors=errors) from None
        return validated.model_dump(by_alias=True)

    def parse_outputs(self, raw_text: str) -> dict[str, Any]:
        """Parse the model's reply (a JSON object; a ```json fence is tolerated) into typed values.

        Keys beyond the declared outputs are dropped; a missing Optional output becomes None.
        Raises OutputValidationError carrying ``raw`` and the ``errors`` list."""
        if not isinstance(raw_text, str):
            raise OutputValidationError(
                f"expected the model's reply as text, got {type(raw_text).__name__}", raw=None, errors=[]
            )
        try:
            data = json.loads(_strip_fence(raw_text), parse_constant=_refuse_constant, parse_float=_finite_float)
        except (ValueError, RecursionError) as exc:
            msg = str(exc) if isinstance(exc, ValueError) else "JSON nested too deeply"
            raise OutputValidationError(
                f"the model's reply is not valid JSON: {msg}",
                raw=raw_text,
                errors=[{"loc": [], "msg": msg, "type": "json_invalid"}],
            ) from None
        if not isinstance(data, dict):
            kind = type(data).__name__ if data is not None else "null"
            raise OutputValidationError(
                f"the model's reply is JSON but not an object (got {kind}); expected keys: "
                + ", ".join(self.output_names),
                raw=raw_text,
                errors=[{"loc": [], "msg": "Input should be an object", "type": "dict_type"}],
            )
        model = _fields_model(_model_key(self.outputs), "SignatureOutputs")
        try:
            validated = model.model_validate(data)
        except ValidationError as exc:
            errors = clean_errors(exc.errors(include_url=False, include_context=False, include_input=False))
            raise OutputValidationError(
                "the model's reply does not match the signature: " + summarize_errors(errors),
                raw=raw_text,
                errors=errors,
            ) from None
        return validated.model_dump(by_alias=True)


def _finite_float(text: str) -> float:
    """Numbers like 1e999 overflow to inf, which JSON cannot carry back out: refuse them."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:40]}")
    return value


def _object_schema(fields: tuple[Field, ...]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for f in fields:
        prop = f.type.to_json_schema()
        if f.desc:
            prop["description"] = f.desc
        properties[f.name] = prop
    return {
        "type": "object",
        "properties": properties,
        "required": [f.name for f in fields],
        "additionalProperties": False,
    }


# --- pydantic models, cached per field structure ------------------------------


def _model_key(fields: tuple[Field, ...]) -> tuple[tuple[str, TypeSpec], ...]:
    return tuple((f.name, f.type) for f in fields)


@lru_cache(maxsize=1024)
def _fields_model(key: tuple[tuple[str, TypeSpec], ...], model_name: str) -> type[BaseModel]:
    # Python attribute names f0, f1, ... with the real names as aliases: a field may then be called
    # anything valid in a signature ("json", "model_config", "_private") without clashing with pydantic.
    definitions: dict[str, Any] = {}
    for i, (name, spec) in enumerate(key):
        default = None if spec.is_optional else ...
        definitions[f"f{i}"] = (spec._validation_annotation(), PydanticField(default, alias=name))
    return create_model(  # type: ignore[call-overload,no-any-return]
        model_name,
        __config__=ConfigDict(extra="ignore"),  # validated by alias only (populate_by_name is off)
        **definitions,
    )


_FENCE_RE = re.compile(r"^```[A-Za-z0-9_-]*[ \t]*\n(.*?)\n?```$", re.DOTALL)


def _strip_fence(text: str) -> str:
    text = text.strip()
    m = _FENCE_RE.match(text)
    return m.group(1) if m else text


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# --- tokenizer and parser ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # NAME STRING NUMBER -> [ ] , : | EOF
    value: Any
    pos: int  # 0-based offset into the parsed text
    text: str


_TOKEN_RE = re.compile(
    r"""
    (?P<WS>\s+)
  | (?P<ARROW>->)
  | (?P<NUMBER>-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<NAME>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<DQ>"(?:[^"\\\n]|\\.)*")
  | (?P<SQ>'(?:[^'\\\n]|\\.)*')
  | (?P<PUNCT>[\[\],:|])
    """,
    re.VERBOSE,
)
_INT_RE = re.compile(r"-?\d+")
_SQ_ESCAPES = {
    "'": "'", '"': '"', "\\": "\\", "/": "/", "n": "\n", "t": "\t", "r": "\r", "0": "\0", "b": "\b", "f": "\f",
}


class _Parser:
    """Recursive descent over a lazily tokenized text (nothing is evaluated)::

        signature := fields '->' fields
        fields    := [ field (',' field)* ]
        field     := NAME [ ':' type ]
        type      := primary ('|' primary)*          # only 'T | None'
        primary   := 'str' | 'int' | 'float' | 'bool' | 'None'
                   | ('list' | 'List') '[' type ']'
                   | ('dict' | 'Dict') '[' 'str' ',' type ']'
                   | ('Optional' | 'optional') '[' type ']'
                   | 'Literal' '[' value (',' value)* ']'
        value     := STRING | NUMBER | 'True' | 'False' | 'true' | 'false'

    Tokens are read on demand, so an error is reported where the parser stands (an unknown type
    name is refused before whatever follows it is even looked at).
    """

    def __init__(self, text: str, *, type_of: str | None = None) -> None:
        self.text = text
        self.type_of = type_of  # set when parsing one type string of the JSON form
        self.field: str | None = type_of or None
        self.offset = 0
        self.lookahead: _Token | None = None

    # -- errors --------------------------------------------------------------

    def error(
        self, message: str, pos: int, *, tail: str = "", field: str | None = None, mention_field: bool = True
    ) -> SignatureError:
        """``<message>[ for field 'x'] at column N[ of type '...']<tail>``; details: field, position (1-based)."""
        field = self.field if field is None else field
        subject = f" for field {field!r}" if field and mention_field else ""
        where = f"at column {pos + 1}"
        if self.type_of is not None:
            where += f" of type {self.text!r}"
        details: dict[str, Any] = {"position": pos + 1}
        if field:
            details["field"] = field
        return SignatureError(f"{message}{subject} {where}{tail}", **details)

    @staticmethod
    def describe(tok: _Token) -> str:
        return "end of input" if tok.kind == "EOF" else repr(tok.text)

    # -- tokens --------------------------------------------------------------

    def _lex(self) -> _Token:
        text = self.text
        while True:
            pos = self.offset
            if pos >= len(text):
                return _Token("EOF", None, len(text), "")
            m = _TOKEN_RE.match(text, pos)
            if m is None:
                raise self.error(f"unexpected character {text[pos]!r}", pos)
            self.offset = m.end()
            kind, raw = m.lastgroup, m.group()
            if kind == "WS":
                continue
            if kind == "NUMBER":
                return _Token("NUMBER", self._number(raw, pos), pos, raw)
            if kind == "DQ":
                return _Token("STRING", self._string(raw[1:-1], pos), pos, raw)
            if kind == "SQ":
                return _Token("STRING", self._string(self._sq_to_json(raw[1:-1], pos), pos), pos, raw)
            if kind == "NAME":
                return _Token("NAME", raw, pos, raw)
            return _Token(raw, raw, pos, raw)  # '->' and punctuation are their own kinds

    def _number(self, raw: str, pos: int) -> int | float:
        value: int | float
        if _INT_RE.fullmatch(raw):
            if len(raw.lstrip("-")) > 30:
                raise self.error(f"number {raw[:20]}... is too long", pos)
            return int(raw)
        value = float(raw)
        if not math.isfinite(value):
            raise self.error(f"number {raw[:20]!r} is out of range", pos)
        return value

    def _sq_to_json(self, body: str, pos: int) -> str:
        """The inside of a single-quoted string as the inside of a JSON string."""
        out: list[str] = []
        k = 0
        while k < len(body):
            ch = body[k]
            if ch == "\\":
                nxt = body[k + 1]  # the token regex guarantees a character after a backslash
                if nxt == "u":
                    out.append("\\u")
                elif nxt in _SQ_ESCAPES:
                    out.append(json.dumps(_SQ_ESCAPES[nxt])[1:-1])
                else:
                    raise self.error(f"invalid escape '\\{nxt}' in a string", pos + 1 + k)
                k += 2
                continue
            out.append('\\"' if ch == '"' else ch)
            k += 1
        return "".join(out)

    def _string(self, json_body: str, pos: int) -> str:
        try:
            value = json.loads(f'"{json_body}"', strict=False)  # a JSON string literal: parsing, not evaluation
        except ValueError:
            raise self.error("invalid escape in a string", pos) from None
        if not isinstance(value, str):  # pragma: no cover - the regex only admits string literals
            raise self.error("invalid string", pos)
        return value

    def peek(self) -> _Token:
        if self.lookahead is None:
            self.lookahead = self._lex()
        return self.lookahead

    def next(self) -> _Token:
        tok = self.peek()
        self.lookahead = None
        return tok

    def expect(self, kind: str, what: str) -> _Token:
        tok = self.next()
        if tok.kind != kind:
            raise self.error(f"expected {what}", tok.pos, tail=f", found {self.describe(tok)}")
        return tok

    # -- signature -------------------------------------------------------------

    def signature(self) -> tuple[list[tuple[Field, int]], list[tuple[Field, int]]]:
        if "->" not in self.text:
            raise SignatureError(
                "missing '->' between inputs and outputs (e.g. 'question -> answer')",
                position=len(self.text) + 1,
            )
        inputs = self.fields(end="->")
        self.expect("->", "'->'")
        outputs = self.fields(end="EOF")
        return inputs, outputs

    def fields(self, end: str) -> list[tuple[Field, int]]:
        out: list[tuple[Field, int]] = []
        if self.peek().kind == end:
            return out
        while True:
            out.append(self.field_def())
            tok = self.peek()
            if tok.kind == end:
                return out
            if tok.kind == "->":
                raise self.error("more than one '->'", tok.pos, field="")
            if tok.kind != ",":
                after = out[-1][0].name
                wanted = "',' or '->'" if end == "->" else "',' or end of input"
                raise self.error(
                    f"expected {wanted} after field {after!r}",
                    tok.pos,
                    tail=f", found {self.describe(tok)}",
                    field=after,
                    mention_field=False,
                )
            self.next()

    def field_def(self) -> tuple[Field, int]:
        self.field = None
        tok = self.next()
        if tok.kind != "NAME":
            raise self.error("expected a field name", tok.pos, tail=f", found {self.describe(tok)}")
        name = tok.value
        if len(name) > MAX_NAME_CHARS:
            raise self.error(f"field name is too long (max {MAX_NAME_CHARS} chars)", tok.pos)
        if keyword.iskeyword(name):
            raise self.error(f"invalid field name {name!r}: it is a Python keyword", tok.pos, field=name,
                             mention_field=False)
        self.field = name
        spec = TypeSpec("str")
        if self.peek().kind == ":":
            self.next()
            spec = self.type_expr(0)
        return Field(name, spec), tok.pos

    # -- types -----------------------------------------------------------------

    def whole_type(self) -> TypeSpec:
        spec = self.type_expr(0)
        tok = self.peek()
        if tok.kind != "EOF":
            raise self.error(f"unexpected {self.describe(tok)} after the type", tok.pos)
        return spec

    def type_expr(self, depth: int) -> TypeSpec:
        start = self.peek()
        members: list[TypeSpec | None] = [self.primary(depth)]
        while self.peek().kind == "|":
            self.next()
            members.append(self.primary(depth))
        concrete = [m for m in members if m is not None]
        if not concrete:
            raise self.error("'None' alone is not a type (use Optional[T])", start.pos)
        if len(concrete) > 1:
            union = " | ".join(str(c) for c in concrete)
            raise self.error("unions are not supported", start.pos, tail=f" ({union!r}); only 'T | None' is")
        (spec,) = concrete
        return TypeSpec.optional(spec) if len(members) > 1 else spec

    def open_bracket(self, name_tok: _Token, depth: int, example: str) -> None:
        tok = self.peek()
        if tok.kind != "[":
            raise self.error(f"'{name_tok.value}' needs type arguments", name_tok.pos, tail=f" (e.g. {example})")
        if depth + 1 > MAX_TYPE_DEPTH:
            raise self.error(f"type nesting is too deep (max {MAX_TYPE_DEPTH} levels)", tok.pos)
        self.next()

    def close_bracket(self, name_tok: _Token, hint: str) -> None:
        tok = self.next()
        if tok.kind != "]":
            raise self.error(
                f"expected ']' to close '{name_tok.value}['",
                tok.pos,
                tail=f", found {self.describe(tok)} ({hint})",
            )

    def primary(self, depth: int) -> TypeSpec | None:
        tok = self.next()
        if tok.kind != "NAME":
            raise self.error("expected a type", tok.pos, tail=f", found {self.describe(tok)}")
        name = tok.value
        if name == "None":
            return None
        if name in _SCALARS:
            if self.peek().kind == "[":
                raise self.error(f"type '{name}' takes no arguments", self.peek().pos)
            return TypeSpec(_SCALARS[name])  # type: ignore[arg-type]
        if name in _LIST_NAMES:
            self.open_bracket(tok, depth, "list[str]")
            item = self.type_expr(depth + 1)
            self.close_bracket(tok, "list takes one item type")
            return TypeSpec.list_of(item)
        if name in _DICT_NAMES:
            self.open_bracket(tok, depth, "dict[str, int]")
            key_tok = self.peek()
            key = self.type_expr(depth + 1)
            if key.kind != "str":
                raise self.error(f"dict keys must be str, not '{key}'", key_tok.pos)
            self.expect(",", "',' and a value type (dict[str, T])")
            value = self.type_expr(depth + 1)
            self.close_bracket(tok, "dict takes a key type and a value type")
            return TypeSpec.dict_of(value)
        if name in _OPTIONAL_NAMES:
            self.open_bracket(tok, depth, "Optional[int]")
            inner = self.type_expr(depth + 1)
            self.close_bracket(tok, "Optional takes one type")
            return TypeSpec.optional(inner)
        if name in _LITERAL_NAMES:
            self.open_bracket(tok, depth, "Literal['a', 'b']")
            values: list[LiteralValue] = []
            seen: set[tuple[str, Any]] = set()
            while True:
                value, vtok = self.literal_value()
                key = (_literal_class(value), value)
                if key in seen:
                    raise self.error(f"duplicate Literal value {vtok.text}", vtok.pos)
                seen.add(key)
                values.append(value)
                if len(values) > MAX_LITERAL_VALUES:
                    raise self.error(f"Literal has too many values (max {MAX_LITERAL_VALUES})", vtok.pos)
                if self.peek().kind != ",":
                    break
                self.next()
            self.close_bracket(tok, "Literal values are separated by ','")
            return TypeSpec.literal(*values)
        raise self.error(f"unknown type '{name}'", tok.pos, tail=f"; allowed: {ALLOWED_TYPES}")

    def literal_value(self) -> tuple[LiteralValue, _Token]:
        tok = self.next()
        if tok.kind in ("STRING", "NUMBER"):
            return tok.value, tok
        if tok.kind == "NAME" and tok.value in _BOOL_WORDS:
            return _BOOL_WORDS[tok.value], tok
        raise self.error(
            "expected a Literal value (a quoted string, a number, True or False)",
            tok.pos,
            tail=f", found {self.describe(tok)}",
        )


# --- public parsing -----------------------------------------------------------


def parse_type(text: str, *, field: str | None = None) -> TypeSpec:
    """Parse one type string, e.g. ``"list[dict[str, int]]"``."""
    if not isinstance(text, str):
        details = {"field": field} if field else {}
        raise SignatureError(f"a type must be a string, not {type(text).__name__}", **details)
    if len(text) > MAX_TYPE_CHARS:
        details = {"field": field} if field else {}
        raise SignatureError(f"type is too long ({len(text)} chars; max {MAX_TYPE_CHARS})", **details)
    return _Parser(text, type_of=field or "").whole_type()


def _from_string(spec: str) -> tuple[tuple[Field, ...], tuple[Field, ...]]:
    if len(spec) > MAX_SIGNATURE_CHARS:
        raise SignatureError(f"signature is too long ({len(spec)} chars; max {MAX_SIGNATURE_CHARS})")
    parser = _Parser(spec)
    inputs, outputs = parser.signature()
    seen: set[str] = set()
    for f, pos in (*inputs, *outputs):
        if f.name in seen:
            raise parser.error(f"duplicate field {f.name!r}", pos, field=f.name, mention_field=False)
        seen.add(f.name)
    if not outputs:
        raise SignatureError("no output fields (e.g. 'question -> answer')", position=len(spec) + 1)
    if len(seen) > MAX_FIELDS:
        raise SignatureError(f"too many fields ({len(seen)}; max {MAX_FIELDS})")
    return tuple(f for f, _ in inputs), tuple(f for f, _ in outputs)


_JSON_KEYS = ("instructions", "inputs", "outputs")
_FIELD_KEYS = ("type", "desc", "description")


def _fields_from_json(section: str, value: Any, seen: set[str]) -> tuple[Field, ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise SignatureError(
            f"'{section}' must be an object mapping field names to types, not {type(value).__name__}",
            section=section,
        )
    fields: list[Field] = []
    for name, item in value.items():
        _check_name(name)
        if name in seen:
            raise SignatureError(f"duplicate field {name!r}", field=name, section=section)
        seen.add(name)
        if len(seen) > MAX_FIELDS:
            raise SignatureError(f"too many fields (max {MAX_FIELDS})", section=section)
        desc: Any = None
        if isinstance(item, str):
            type_text = item
        elif isinstance(item, Mapping):
            unknown = [k for k in item if k not in _FIELD_KEYS]
            if unknown:
                raise SignatureError(
                    f"unknown key(s) {', '.join(repr(str(k)) for k in unknown)} for field {name!r}; "
                    "allowed: type, desc",
                    field=name,
                    section=section,
                )
            if "desc" in item and "description" in item:
                raise SignatureError(f"field {name!r} has both 'desc' and 'description'", field=name, section=section)
            type_text = item.get("type", "str")
            desc = item.get("desc", item.get("description"))
        else:
            raise SignatureError(
                f"field {name!r} must be a type string or an object with 'type' and 'desc', "
                f"not {type(item).__name__}",
                field=name,
                section=section,
            )
        try:
            spec = parse_type(type_text, field=name)
            fields.append(Field(name, spec, desc))
        except SignatureError as exc:
            exc.details.setdefault("section", section)
            raise
    return tuple(fields)


def _from_mapping(spec: Mapping[str, Any]) -> tuple[str | None, tuple[Field, ...], tuple[Field, ...]]:
    unknown = [k for k in spec if k not in _JSON_KEYS]
    if unknown:
        raise SignatureError(
            f"unknown key(s) {', '.join(repr(str(k)) for k in unknown)} in the signature object; "
            f"allowed: {', '.join(_JSON_KEYS)}"
        )
    if "outputs" not in spec:
        raise SignatureError("no output fields: the signature object needs 'outputs'")
    seen: set[str] = set()
    inputs = _fields_from_json("inputs", spec.get("inputs"), seen)
    outputs = _fields_from_json("outputs", spec.get("outputs"), seen)
    instructions = spec.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise SignatureError(f"instructions must be a string, not {type(instructions).__name__}")
    return instructions, inputs, outputs


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
