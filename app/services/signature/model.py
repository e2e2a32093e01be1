"""The Signature: typed input fields and output fields, with instructions (immutable, hashable)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.errors import SchemaTooComplexError, SignatureError
from app.services.signature.checks import MAX_INSTRUCTIONS_CHARS, NO_OUTPUTS, FieldNames, clean_text
from app.services.signature.schema import fields_schema, output_budget_problem
from app.services.signature.types import Field, ObjectType, TypeSpec, walk_objects
from app.services.signature.validate import parse_outputs as _parse_outputs
from app.services.signature.validate import validate_inputs as _validate_inputs

REASONING_FIELD = "reasoning"
REASONING_DESC = "Think step by step in order to produce the output fields that follow."


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
        named: dict[str, ObjectType] = {}
        for obj in self.object_types:  # one name, one definition: the schema's $defs and to_dict() key on it
            if named.setdefault(obj.name, obj) is not obj:
                raise SignatureError(f"two different object types are named {obj.name!r}", type_name=obj.name)

    # -- views ---------------------------------------------------------------

    @property
    def input_names(self) -> tuple[str, ...]:
        """The input fields' names, in order."""
        return tuple(f.name for f in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        """The output fields' names, in order."""
        return tuple(f.name for f in self.outputs)

    @property
    def object_types(self) -> tuple[ObjectType, ...]:
        """The object types the fields use (inside one another too), in order of first use."""
        return tuple(walk_objects((*self.inputs, *self.outputs)))

    def describe_types(self) -> str | None:
        """For a prompt: each object type the fields use, with its keys, their types, constraints and
        descriptions (a field line shows only the type's name); None when there are none."""
        objects = self.object_types
        if not objects:
            return None
        lines = ["The object types above are JSON objects with exactly these keys:"]
        for obj in objects:
            lines.append(f"`{obj.name}`:")
            for f in obj.fields:
                notes = "; ".join(x for x in (str(f.type), f.constraints.describe()) if x)
                lines.append(f"  - `{f.name}` ({notes})" + (f": {f.desc}" if f.desc else ""))
        return "\n".join(lines)

    def __str__(self) -> str:
        """Canonical text, e.g. ``context: list[str], question: str -> answer: str | None``.
        Parses back to the same fields when they have no object types and no constraints
        (descriptions and instructions are not part of it either); :meth:`to_dict` keeps everything."""
        ins = ", ".join(str(f) for f in self.inputs)
        outs = ", ".join(str(f) for f in self.outputs)
        return f"{ins} -> {outs}" if ins else f"-> {outs}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form; ``parse_signature(sig.to_dict()) == sig``. ``types`` only when there are some."""
        out: dict[str, Any] = {"instructions": self.instructions}
        objects = self.object_types
        if objects:
            out["types"] = {o.name: o.to_dict() for o in objects}
        out["inputs"] = {f.name: f.to_dict() for f in self.inputs}
        out["outputs"] = {f.name: f.to_dict() for f in self.outputs}
        return out

    # -- derived signatures ----------------------------------------------------

    def with_instructions(self, instructions: str | None) -> Signature:
        """The same fields with other instructions."""
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

    def check_budget(self) -> None:
        """Raise SchemaTooComplexError (422) when the output schema is past a budget (bytes, depth,
        union width: ``checks.MAX_SCHEMA_*``, ``MAX_UNION_WIDTH``). Not done while parsing, which
        builds no pydantic model; done by :meth:`output_json_schema`, before any request is sent."""
        budget = output_budget_problem(self.outputs)
        if budget is not None:
            message, details = budget
            raise SchemaTooComplexError(message, **details)

    def output_json_schema(self) -> dict[str, Any]:
        """Object schema for structured outputs: properties in order, all required, no extras;
        object types in ``$defs``. Raises SchemaTooComplexError past the budget (:meth:`check_budget`)."""
        self.check_budget()
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
