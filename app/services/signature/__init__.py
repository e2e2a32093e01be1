"""Signatures: the typed input/output contract of a prediction, in DSPy's syntax.

Two forms are accepted::

    "context: list[str], question: str -> answer: str, confidence: float"

    {"instructions": "Answer from the context.",
     "types": {"Contact": {"name": "str", "email": {"type": "Optional[str]", "desc": "as written"}}},
     "inputs": {"context": {"type": "list[str]", "desc": "passages"}, "question": "str"},
     "outputs": {"answer": {"type": "str", "max_length": 500}, "confidence": {"type": "float", "ge": 0, "le": 1},
                 "people": "list[Contact]"}}

A field without a type is ``str``. Types come from a whitelist (:data:`ALLOWED_TYPES`), with
DSPy's (Python's) meaning: ``str``, ``int``, ``float``, ``bool``, ``Any``, ``list[T]``,
``dict[str, T]``, ``tuple[A, B]`` (fixed) and ``tuple[T, ...]`` (variadic), ``Literal[...]``
(string, int, float and bool values), ``Optional[T]`` (also ``optional[T]``, ``T | None``) and
unions, ``Union[A, B]`` or ``A | B`` (nested unions flatten, ``None`` makes one Optional); ``List``,
``Dict`` and ``Tuple`` are accepted aliases; all of them nest. The JSON form adds named object
types (``types``: each a set of fields in the form of ``inputs``/``outputs``), usable by name in any
type string, and constraints per field (``ge``, ``gt``, ``le``, ``lt``, ``min_length``,
``max_length``, ``pattern``, ``min_items``, ``max_items``). Type text is tokenized and parsed by a
small recursive-descent parser here; nothing from a request is ever imported or evaluated.

The parsed :class:`Signature` is immutable and hashable, so it can key caches. It builds the
JSON schema handed to vLLM's structured outputs (``anyOf`` for unions, ``prefixItems`` for fixed
tuples, ``{}`` for Any, ``$defs``/``$ref`` for object types; byte-identical for identical
signatures, so vLLM's grammar cache hits), refuses a schema past the budgets that bound vLLM's
grammar compilation (``schema_too_complex``, 422), validates request inputs (422 on a mismatch)
and validates the model's JSON reply into the declared Python types (a tuple is a tuple, an
object type a plain dict).

Validation is pydantic's lax mode (``"3"`` for an ``int`` becomes ``3``, ``"three"`` fails) with
one exception: a JSON boolean is never accepted as a number (or a number as a boolean literal),
because ``true`` for ``confidence: float`` is a wrong answer, not a spelling of ``1.0``. Unions are
pydantic's smart unions: ``"3"`` for ``int | str`` stays the string.

One concept per module:

* ``types``       -- the type whitelist, :class:`TypeSpec`, :class:`ObjectType`, :class:`Field`
* ``model``       -- :class:`Signature`
* ``constraints`` -- :class:`Constraints` of a field: parsed, fitted to the type, enforced
* ``checks``      -- the limits and budgets and the checks that enforce them (shared by parser and constructors)
* ``lexer``       -- tokens of the string form, and errors that carry the column
* ``grammar``     -- the recursive-descent parser of the string form and of type strings
* ``parser``      -- the string and JSON forms read into a Signature (:func:`parse_signature`)
* ``schema``      -- JSON schemas of fields, by the one generator in :mod:`app.json_schema`
* ``validate``    -- pydantic validation of inputs and outputs
"""

from app.services.signature.checks import (
    MAX_DESC_CHARS,
    MAX_FIELDS,
    MAX_INSTRUCTIONS_CHARS,
    MAX_LITERAL_VALUES,
    MAX_NAME_CHARS,
    MAX_OBJECT_DEPTH,
    MAX_OBJECT_TYPES,
    MAX_PATTERN_CHARS,
    MAX_SCHEMA_BYTES,
    MAX_SCHEMA_DEPTH,
    MAX_SIGNATURE_CHARS,
    MAX_TYPE_CHARS,
    MAX_TYPE_DEPTH,
    MAX_UNION_WIDTH,
    LiteralValue,
)
from app.services.signature.constraints import CONSTRAINT_KEYS, Constraints
from app.services.signature.model import REASONING_DESC, REASONING_FIELD, Signature
from app.services.signature.parser import parse_signature, parse_signature_cached, parse_type
from app.services.signature.types import ALLOWED_TYPES, Field, Kind, ObjectType, TypeSpec

__all__ = [
    "ALLOWED_TYPES",
    "CONSTRAINT_KEYS",
    "MAX_DESC_CHARS",
    "MAX_FIELDS",
    "MAX_INSTRUCTIONS_CHARS",
    "MAX_LITERAL_VALUES",
    "MAX_NAME_CHARS",
    "MAX_OBJECT_DEPTH",
    "MAX_OBJECT_TYPES",
    "MAX_PATTERN_CHARS",
    "MAX_SCHEMA_BYTES",
    "MAX_SCHEMA_DEPTH",
    "MAX_SIGNATURE_CHARS",
    "MAX_TYPE_CHARS",
    "MAX_TYPE_DEPTH",
    "MAX_UNION_WIDTH",
    "REASONING_DESC",
    "REASONING_FIELD",
    "Constraints",
    "Field",
    "Kind",
    "LiteralValue",
    "ObjectType",
    "Signature",
    "TypeSpec",
    "parse_signature",
    "parse_signature_cached",
    "parse_type",
]
