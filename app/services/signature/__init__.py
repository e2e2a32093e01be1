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

One concept per module:

* ``types``    -- the type whitelist, :class:`TypeSpec`, :class:`Field`, :class:`Signature`
* ``checks``   -- the limits and the checks that enforce them (shared by parser and constructors)
* ``lexer``    -- tokens of the string form, and errors that carry the column
* ``grammar``  -- the recursive-descent parser of the string form and of type strings
* ``parser``   -- the string and JSON forms read into a Signature (:func:`parse_signature`)
* ``schema``   -- JSON schemas of fields, by the one generator in :mod:`app.json_schema`
* ``validate`` -- pydantic validation of inputs and outputs
"""

from app.services.signature.checks import (
    MAX_DESC_CHARS,
    MAX_FIELDS,
    MAX_INSTRUCTIONS_CHARS,
    MAX_LITERAL_VALUES,
    MAX_NAME_CHARS,
    MAX_SIGNATURE_CHARS,
    MAX_TYPE_CHARS,
    MAX_TYPE_DEPTH,
    LiteralValue,
)
from app.services.signature.parser import parse_signature, parse_signature_cached, parse_type
from app.services.signature.types import (
    ALLOWED_TYPES,
    REASONING_DESC,
    REASONING_FIELD,
    Field,
    Kind,
    Signature,
    TypeSpec,
)

__all__ = [
    "ALLOWED_TYPES",
    "MAX_DESC_CHARS",
    "MAX_FIELDS",
    "MAX_INSTRUCTIONS_CHARS",
    "MAX_LITERAL_VALUES",
    "MAX_NAME_CHARS",
    "MAX_SIGNATURE_CHARS",
    "MAX_TYPE_CHARS",
    "MAX_TYPE_DEPTH",
    "REASONING_DESC",
    "REASONING_FIELD",
    "Field",
    "Kind",
    "LiteralValue",
    "Signature",
    "TypeSpec",
    "parse_signature",
    "parse_signature_cached",
    "parse_type",
]
