"""Validation of request inputs and of the model's reply against a signature, with pydantic.

Lax mode (``"3"`` for an ``int`` becomes ``3``, ``"three"`` fails) with one exception: a JSON
boolean is never accepted as a number (or a number as a boolean literal), because ``true`` for
``confidence: float`` is a wrong answer, not a spelling of ``1.0``; inside unions too.

Unions are pydantic's smart unions: a value that is exactly one member's type is that member
(``"3"`` for ``int | str`` stays the string ``"3"``, ``3`` the int), lax coercion only when no member
matches exactly. A tuple arrives as a JSON array and is validated into a Python tuple (its length
too). An object type is validated by a model of its fields and comes back as a plain dict: an
Optional property may be left out (it becomes None); unknown keys are refused in inputs and
dropped from outputs, as at the top level. Constraints are validated always (inputs: 422, outputs:
the 502 ``output_validation_error``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    GetCoreSchemaHandler,
    GetPydanticSchema,
    PlainValidator,
    ValidationError,
    create_model,
)
from pydantic import Field as PydanticField
from pydantic_core import PydanticCustomError

from app.errors import InvalidRequestError, OutputValidationError, clean_errors, summarize_errors
from app.services.signature.checks import literal_key, literal_text

if TYPE_CHECKING:
    from app.services.signature.constraints import Constraints
    from app.services.signature.model import Signature
    from app.services.signature.types import Field, ObjectType, TypeSpec

Mode = Literal["inputs", "outputs"]


def validate_inputs(signature: Signature, inputs: Any) -> dict[str, Any]:
    """See :meth:`Signature.validate_inputs`."""
    if not isinstance(inputs, Mapping):
        raise InvalidRequestError(
            f"inputs must be an object with the fields {list(signature.input_names)}, not {type(inputs).__name__}",
            expected=list(signature.input_names),
        )
    names = set(signature.input_names)
    missing = [f.name for f in signature.inputs if f.name not in inputs and not f.type.is_optional]
    extra = [k for k in inputs if k not in names]
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing input field(s): " + ", ".join(repr(n) for n in missing))
        if extra:
            parts.append("unknown input field(s): " + ", ".join(repr(str(n)) for n in extra))
        raise InvalidRequestError(
            "; ".join(parts) + f" (expected: {', '.join(signature.input_names) or 'none'})",
            missing=missing,
            extra=[str(n) for n in extra],
            expected=list(signature.input_names),
        )
    model = _fields_model(_model_key(signature.inputs), "inputs")
    try:
        validated = model.model_validate(dict(inputs))
    except ValidationError as exc:
        errors = clean_errors(exc.errors(include_url=False, include_context=False, include_input=False))
        raise InvalidRequestError("invalid inputs: " + summarize_errors(errors), errors=errors) from None
    return validated.model_dump(by_alias=True)


def parse_outputs(signature: Signature, raw_text: str) -> dict[str, Any]:
    """See :meth:`Signature.parse_outputs`."""
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
            + ", ".join(signature.output_names),
            raw=raw_text,
            errors=[{"loc": [], "msg": "Input should be an object", "type": "dict_type"}],
        )
    model = _fields_model(_model_key(signature.outputs), "outputs")
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


# --- annotations: the spec's Python type, with booleans kept apart from numbers ---------------


def validation_annotation(spec: TypeSpec, mode: Mode = "outputs") -> Any:
    """Like :meth:`TypeSpec.to_annotation`, with booleans refused where numbers are expected and
    object types validated by their models (for ``mode``'s rule on unknown keys)."""
    return spec.to_annotation(_with_validator, lambda obj: _object_model(obj, mode))


def _field_annotation(spec: TypeSpec, constraints: Constraints, mode: Mode) -> Any:
    annotation = validation_annotation(spec, mode)
    inner = validation_annotation(spec.args[0], mode) if spec.kind == "optional" else None
    return constraints.apply(spec, annotation, inner)


def _with_validator(spec: TypeSpec, annotation: Any) -> Any:
    if spec.kind == "union" or (spec.kind == "optional" and spec.args[0].kind == "union"):
        return Annotated[annotation, _union_error(spec)]
    if spec.kind in ("int", "float"):
        return Annotated[annotation, BeforeValidator(_refuse_bool(spec.kind))]
    if spec.kind == "literal":
        return Annotated[annotation, PlainValidator(_literal_matcher(spec))]
    return annotation


def _union_error(spec: TypeSpec) -> Any:
    """One error for a value no member takes: ``Input should be int | str``, at the field's own
    location (pydantic would list one error per member, located by its internal validator names)."""
    members = spec.args[0] if spec.kind == "optional" else spec
    expected = str(members) + (" | None" if spec.kind == "optional" else "")

    def schema(source: Any, handler: GetCoreSchemaHandler) -> Any:
        core = handler(source)
        union = core["schema"] if core.get("type") == "nullable" else core
        if union.get("type") == "union":
            union["custom_error_type"] = "union_type"
            union["custom_error_message"] = f"Input should be {expected}"
        return core

    return GetPydanticSchema(schema)


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
    expected = ", ".join(literal_text(v) for v in allowed)

    def check(value: Any) -> Any:
        if isinstance(value, (str, int, float)):
            key = literal_key(value)
            for candidate in allowed:
                if literal_key(candidate) == key:
                    return candidate
        raise PydanticCustomError("literal_error", "Input should be one of: {expected}", {"expected": expected})

    return check


# --- pydantic models, cached per field structure ------------------------------


_Key = tuple[tuple[str, "TypeSpec", "Constraints"], ...]


def _model_key(fields: tuple[Field, ...]) -> _Key:
    """What validation depends on: names, types and constraints (not descriptions)."""
    return tuple((f.name, f.type, f.constraints) for f in fields)


@lru_cache(maxsize=1024)
def _fields_model(key: _Key, mode: Mode) -> type[BaseModel]:
    # extra keys at the top: dropped from outputs; inputs are checked by name before (unknown: 422)
    return _model("SignatureInputs" if mode == "inputs" else "SignatureOutputs", key, mode, extra="ignore")


@lru_cache(maxsize=1024)
def _object_model(obj: ObjectType, mode: Mode) -> type[BaseModel]:
    extra = "forbid" if mode == "inputs" else "ignore"
    return _model(obj.name, _model_key(obj.fields), mode, extra=extra)


def _model(name: str, key: _Key, mode: Mode, *, extra: Any) -> type[BaseModel]:
    # Python attribute names f0, f1, ... with the real names as aliases: a field may then be called
    # anything valid in a signature ("json", "model_config", "_private") without clashing with pydantic.
    definitions: dict[str, Any] = {}
    for i, (field_name, spec, constraints) in enumerate(key):
        default = None if spec.is_optional else ...
        definitions[f"f{i}"] = (_field_annotation(spec, constraints, mode), PydanticField(default, alias=field_name))
    return create_model(  # type: ignore[call-overload,no-any-return]
        name,
        __config__=ConfigDict(extra=extra),  # validated by alias only (populate_by_name is off)
        **definitions,
    )


# --- the reply's JSON -----------------------------------------------------------------------------


def _finite_float(text: str) -> float:
    """Numbers like 1e999 overflow to inf, which JSON cannot carry back out: refuse them."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:40]}")
    return value


_FENCE_RE = re.compile(r"^```[A-Za-z0-9_-]*[ \t]*\n(.*?)\n?```$", re.DOTALL)


def _strip_fence(text: str) -> str:
    text = text.strip()
    m = _FENCE_RE.match(text)
    return m.group(1) if m else text


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
