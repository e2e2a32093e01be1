"""Prompt layout for a signature: DSPy's ChatAdapter idea, simplified for JSON structured outputs.

Messages, in order::

    system      instructions (or a default derived from the fields), the input and output fields
                with their types and descriptions, and the JSON reply format
    user        demo 1 inputs          } one pair per usable demo
    assistant   demo 1 outputs (JSON)  }
    ...
    user        the actual inputs

Inputs are rendered as DSPy-style blocks, in signature order::

    [[ ## question ## ]]
    What is the capital of France?

``str`` values verbatim, everything else as ``json.dumps(value, ensure_ascii=False)``.

Prefix caching: the system message and the demo messages depend only on the signature and the
demos, and rendering is deterministic, so every call with the same signature and demos shares a
byte-identical prefix; only the last user message varies (vLLM's automatic prefix caching then
reuses that prefix across a batch).

Demos are flat dicts, as DSPy saves them (``{"question": ..., "answer": ...}``). Validation is
loose: values are not type-checked, but a key that is neither an input nor an output is refused
(``augmented``, DSPy's bookkeeping flag, is ignored). A demo may omit fields: missing inputs are
left out of its user message and missing outputs out of its assistant JSON. That keeps labelled
demos usable under chain of thought, where they have no ``reasoning``; structured decoding still
forces every key into the real answer. A demo with no output field at all teaches nothing and is
skipped.

Repair (``config.repair``): a reply that did not match the signature is followed by two more
messages, the reply itself (assistant) and :func:`repair_prompt` (user): what was wrong, each
validation error as ``loc: msg`` (at most ``MAX_REPAIR_ERRORS``, each cut to
``MAX_REPAIR_ERROR_CHARS``), and the reply format again. The conversation before them is unchanged,
so the repair call shares the first call's cached prefix.

Pure functions, no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from app.errors import InvalidRequestError
from app.services.signature import Field, Signature

__all__ = [
    "build_messages",
    "default_instructions",
    "demo_messages",
    "render_demo_outputs",
    "render_inputs",
    "repair_messages",
    "repair_prompt",
    "response_format",
    "schema_name",
    "system_prompt",
]

DEMO_METADATA_KEYS = frozenset({"augmented"})  # DSPy marks bootstrapped demos with it
NO_INPUTS_TEXT = "(no input fields)"
MAX_REPAIR_ERRORS = 10  # validation errors shown to the model in a repair prompt ...
MAX_REPAIR_ERROR_CHARS = 200  # ... each cut to this many characters


def _render_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _field_line(index: int, f: Field) -> str:
    limits = f.constraints.describe()
    line = f"{index}. `{f.name}` ({f.type}; {limits})" if limits else f"{index}. `{f.name}` ({f.type})"
    return f"{line}: {f.desc}" if f.desc else line


def default_instructions(signature: Signature) -> str:
    """DSPy's default: ``Given the fields `a`, `b`, produce the fields `c`.``"""
    outs = ", ".join(f"`{n}`" for n in signature.output_names)
    if not signature.inputs:
        return f"Produce the fields {outs}."
    ins = ", ".join(f"`{n}`" for n in signature.input_names)
    return f"Given the fields {ins}, produce the fields {outs}."


@lru_cache(maxsize=1024)
def system_prompt(signature: Signature) -> str:
    """The system message text. Depends on the signature only (cached, byte-stable)."""
    parts = [signature.instructions or default_instructions(signature)]
    if signature.inputs:
        lines = ["Your input fields are:"]
        lines += [_field_line(i, f) for i, f in enumerate(signature.inputs, 1)]
        parts.append("\n".join(lines))
    lines = ["Your output fields are:"]
    lines += [_field_line(i, f) for i, f in enumerate(signature.outputs, 1)]
    parts.append("\n".join(lines))
    types = signature.describe_types()
    if types:
        parts.append(types)
    if signature.inputs:
        parts.append(
            "Each user message gives the input fields as blocks:\n\n"
            "[[ ## field_name ## ]]\n"
            "value\n\n"
            "Text values are given as is, other values as JSON."
        )
    keys = ", ".join(json.dumps(n) for n in signature.output_names)
    parts.append(
        f"Respond with a JSON object with exactly these keys, in this order: {keys}. "
        "Give each value the type listed above. Do not write anything outside the JSON object."
    )
    return "\n\n".join(parts)


def render_inputs(signature: Signature, values: Mapping[str, Any]) -> str:
    """Input blocks in signature order; fields absent from ``values`` are left out."""
    blocks = [
        f"[[ ## {f.name} ## ]]\n{_render_value(values[f.name])}" for f in signature.inputs if f.name in values
    ]
    return "\n\n".join(blocks) if blocks else NO_INPUTS_TEXT


def render_demo_outputs(signature: Signature, demo: Mapping[str, Any]) -> str:
    """The outputs present in ``demo`` as one JSON object, in signature order."""
    return json.dumps({n: demo[n] for n in signature.output_names if n in demo}, ensure_ascii=False)


def _check_demo(signature: Signature, index: int, demo: Any) -> bool:
    """Raise on a malformed demo; return whether it has an output to show."""
    if not isinstance(demo, Mapping):
        raise InvalidRequestError(
            f"demo {index} must be an object of input and output fields, not {type(demo).__name__}", demo=index
        )
    known = set(signature.input_names) | set(signature.output_names)
    unknown = [str(k) for k in demo if k not in known and k not in DEMO_METADATA_KEYS]
    if unknown:
        raise InvalidRequestError(
            f"demo {index} has unknown field(s) {', '.join(repr(k) for k in unknown)}; "
            f"inputs: {', '.join(signature.input_names) or 'none'}; outputs: {', '.join(signature.output_names)}",
            demo=index,
            unknown=unknown,
        )
    return any(n in demo for n in signature.output_names)


def demo_messages(signature: Signature, demos: Sequence[Mapping[str, Any]] | None) -> list[dict[str, str]]:
    """One user + assistant pair per usable demo. Raises InvalidRequestError on a malformed demo."""
    if not demos:
        return []
    if isinstance(demos, (str, bytes, Mapping)) or not isinstance(demos, Sequence):
        raise InvalidRequestError(f"demos must be a list of objects, not {type(demos).__name__}")
    messages: list[dict[str, str]] = []
    for i, demo in enumerate(demos):
        if not _check_demo(signature, i, demo):
            continue
        try:
            user = render_inputs(signature, demo)
            assistant = render_demo_outputs(signature, demo)
        except (TypeError, ValueError) as exc:  # a value JSON cannot encode
            raise InvalidRequestError(f"demo {i} has a value that is not JSON: {exc}", demo=i) from None
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": assistant})
    return messages


def build_messages(
    signature: Signature,
    inputs: Mapping[str, Any],
    demos: Sequence[Mapping[str, Any]] | None = None,
) -> list[dict[str, str]]:
    """OpenAI chat messages: system, demo pairs, then the actual inputs.

    ``inputs`` are checked with :meth:`Signature.validate_inputs` (idempotent on already
    validated values) so the rendered text is always that of well-typed values.
    Raises InvalidRequestError (422) for bad inputs or malformed demos."""
    values = signature.validate_inputs(inputs)
    messages: list[dict[str, str]] = [{"role": "system", "content": system_prompt(signature)}]
    messages += demo_messages(signature, demos)
    messages.append({"role": "user", "content": render_inputs(signature, values)})
    return messages


_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


def schema_name(signature: Signature, name: str | None = None) -> str:
    """A ``json_schema.name`` OpenAI-style servers accept (``^[A-Za-z0-9_-]{1,64}$``):
    ``name`` cleaned, or the output field names joined."""
    raw = name if name else "_".join(signature.output_names)
    safe = _UNSAFE_NAME_CHARS.sub("_", raw).strip("_")[:64]
    return safe or "output"


@lru_cache(maxsize=1024)
def response_format(signature: Signature, name: str | None = None) -> dict[str, Any]:
    """vLLM / OpenAI ``response_format`` constraining the reply to the signature's outputs.

    Built once per signature (it is on every request's path: the schema costs ~27 µs to copy out
    of its cache); the dict is shared, so callers only read or serialise it."""
    return {
        "type": "json_schema",
        "json_schema": {
            "name": schema_name(signature, name),
            "schema": signature.output_json_schema(),
            "strict": True,
        },
    }


def _error_line(error: Mapping[str, Any]) -> str:
    msg = str(error.get("msg") or "invalid")
    if error.get("type") == "json_invalid":
        msg = f"not valid JSON ({msg})"
    if len(msg) > MAX_REPAIR_ERROR_CHARS:
        msg = msg[: MAX_REPAIR_ERROR_CHARS - 3] + "..."
    loc = ".".join(str(p) for p in error.get("loc") or ())
    where = f"`{loc[:MAX_REPAIR_ERROR_CHARS]}`" if loc else "the reply as a whole"
    return f"- {where}: {msg}"


def repair_prompt(
    signature: Signature, errors: Sequence[Mapping[str, Any]], *, cut_at_tokens: int | None = None
) -> str:
    """The user message asking for a corrected reply: the validation errors (``{"loc", "msg"}``,
    bounded), or, for a reply cut off by ``max_tokens`` (``cut_at_tokens``), that it was too long."""
    keys = ", ".join(json.dumps(n) for n in signature.output_names)
    if cut_at_tokens is not None:
        head = (f"Your reply was cut off at the limit of {cut_at_tokens} tokens before the JSON object was "
                "complete. Keep every value short.")
    else:
        lines = [_error_line(e) for e in errors[:MAX_REPAIR_ERRORS]]
        if len(errors) > MAX_REPAIR_ERRORS:
            lines.append(f"- and {len(errors) - MAX_REPAIR_ERRORS} more")
        head = "Your reply does not match the required output format:\n" + (
            "\n".join(lines) if lines else "- it could not be read as the required JSON object")
    return (f"{head}\n\nReply again with only the corrected JSON object, with exactly these keys, in this "
            f"order: {keys}. Give each value the type listed above. Do not write anything outside the JSON "
            "object.")


def repair_messages(
    messages: Sequence[Mapping[str, Any]],
    signature: Signature,
    reply: str,
    errors: Sequence[Mapping[str, Any]],
    *,
    cut_at_tokens: int | None = None,
) -> list[dict[str, Any]]:
    """``messages`` followed by the bad ``reply`` (assistant) and the :func:`repair_prompt` (user)."""
    return [
        *messages,
        {"role": "assistant", "content": reply},
        {"role": "user", "content": repair_prompt(signature, errors, cut_at_tokens=cut_at_tokens)},
    ]
