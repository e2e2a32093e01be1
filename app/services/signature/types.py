"""The signature model: the type whitelist, TypeSpec, Field and Signature (immutable, hashable)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any, Literal, Optional

from app.errors import SignatureError
from app.services.signature.checks import (
    MAX_DESC_CHARS,
    MAX_INSTRUCTIONS_CHARS,
    NO_OUTPUTS,
    FieldNames,
    LiteralValue,
    LiteralValues,
    check_field_name,
    clean_text,
    literal_text,
    nesting_problem,
)
from app.services.signature.schema import fields_schema, type_schema
from app.services.signature.validate import parse_outputs as _parse_outputs
from app.services.signature.validate import validate_inputs as _validate_inputs

# --- the type whitelist -----------------------------------------------------------------------
# The one place that says which types a signature may use. A new type needs: a kind in ``Kind``,
# its spelling(s) in ``TYPE_NAMES``, a line in ``ALLOWED_TYPES``, its case in the TypeSpec
# methods that switch on the kind (``__post_init__``, ``depth``, ``to_annotation``), and its
# syntax in ``grammar.Parser.primary``. JSON schemas and validators follow from the annotation.

Kind = Literal["str", "int", "float", "bool", "list", "dict", "literal", "optional"]

SCALARS: Mapping[str, type] = {"str": str, "int": int, "float": float, "bool": bool}

TYPE_NAMES: Mapping[str, Kind] = {  # what a type may be called in a signature
    "str": "str",
    "int": "int",
    "float": "float",
    "bool": "bool",
    "list": "list",
    "List": "list",
    "dict": "dict",
    "Dict": "dict",
    "Optional": "optional",
    "optional": "optional",
    "Literal": "literal",
}

ALLOWED_TYPES = "str, int, float, bool, list[T], dict[str, T], Literal[...], Optional[T]"

REASONING_FIELD = "reasoning"
REASONING_DESC = "Think step by step in order to produce the output fields that follow."


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
        if kind in SCALARS:
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
            values = LiteralValues()
            for value in args:
                problem = values.add(value)
                if problem is not None:
                    raise SignatureError(problem)
            text = "Literal[" + ", ".join(literal_text(v) for v in args) + "]"
        else:
            raise SignatureError(f"unknown type kind {kind!r}")
        problem = nesting_problem(self.depth)
        if problem is not None:
            raise SignatureError(f"{problem}: {text}")
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
        if self.kind in SCALARS:
            return 0
        if self.kind == "literal":
            return 1
        return 1 + self.args[0].depth

    # -- conversions ----------------------------------------------------------

    def to_annotation(self, wrap: Callable[[TypeSpec, Any], Any] | None = None) -> Any:
        """The plain Python type: ``str``, ``list[str]``, ``dict[str, int]``, ``Literal['a', 1]``,
        ``Optional[int]``. Built from the parsed spec, never from text.

        ``wrap(spec, annotation)``, when given, replaces each node's annotation, innermost first:
        validation and schema generation add their metadata this way, so the kinds are spelled
        out here only."""
        kind = self.kind
        if kind in SCALARS:
            annotation = SCALARS[kind]
        elif kind == "list":
            annotation = list[self.args[0].to_annotation(wrap)]  # type: ignore[misc]
        elif kind == "dict":
            annotation = dict[str, self.args[0].to_annotation(wrap)]  # type: ignore[misc]
        elif kind == "optional":
            annotation = Optional[self.args[0].to_annotation(wrap)]  # noqa: UP007
        else:
            annotation = Literal[self.args]  # type: ignore[valid-type]
        return annotation if wrap is None else wrap(self, annotation)

    def to_json_schema(self) -> dict[str, Any]:
        """A JSON schema without ``$ref``: ``enum`` for Literal, ``anyOf`` with null for Optional."""
        return type_schema(self)


@dataclass(frozen=True)
class Field:
    """One input or output field."""

    name: str
    type: TypeSpec = dc_field(default_factory=lambda: TypeSpec("str"))
    desc: str | None = None

    def __post_init__(self) -> None:
        check_field_name(self.name)
        if not isinstance(self.type, TypeSpec):
            raise SignatureError(f"type of field {self.name!r} must be a TypeSpec", field=self.name)
        desc = clean_text(self.desc, what=f"desc of field {self.name!r}", limit=MAX_DESC_CHARS, field=self.name)
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
    """Immutable, hashable. Build one with :func:`~app.services.signature.parse_signature`."""

    instructions: str | None = None
    inputs: tuple[Field, ...] = ()
    outputs: tuple[Field, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(
            self, "instructions", clean_text(self.instructions, what="instructions", limit=MAX_INSTRUCTIONS_CHARS)
        )
        names = FieldNames()
        for f in (*self.inputs, *self.outputs):
            if not isinstance(f, Field):
                raise SignatureError(f"signature fields must be Field objects, not {type(f).__name__}")
            problem = names.add(f.name)
            if problem is not None:
                raise SignatureError(problem, field=f.name)
        if not self.outputs:
            raise SignatureError(NO_OUTPUTS)
        problem = names.too_many()
        if problem is not None:
            raise SignatureError(problem)

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

    # -- schemas (see schema.py) -------------------------------------------------

    def output_json_schema(self) -> dict[str, Any]:
        """Object schema for structured outputs: properties in order, all required, no extras."""
        return fields_schema(self.outputs)

    def input_json_schema(self) -> dict[str, Any]:
        """Same shape for the inputs (for listings and clients); Optional inputs are not required."""
        return fields_schema(self.inputs, required=[f.name for f in self.inputs if not f.type.is_optional])

    # -- validation (see validate.py) ---------------------------------------------

    def validate_inputs(self, inputs: Any) -> dict[str, Any]:
        """Check and coerce request inputs. Optional inputs may be left out (they become None).

        Raises InvalidRequestError (422) naming missing/extra fields, or with pydantic's errors."""
        return _validate_inputs(self, inputs)

    def parse_outputs(self, raw_text: str) -> dict[str, Any]:
        """Parse the model's reply (a JSON object; a ```json fence is tolerated) into typed values.

        Keys beyond the declared outputs are dropped; a missing Optional output becomes None.
        Raises OutputValidationError carrying ``raw`` and the ``errors`` list."""
        return _parse_outputs(self, raw_text)
