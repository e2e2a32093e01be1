"""An OpenAI-compatible request on its way to vLLM: read, guarded, and changed only where needed.

The body is forwarded as the client sent it (the same bytes) unless the gateway must change it: the
model filled in when the client named none (the upstream chosen may serve several), usage asked for
on a stream (for the books; the usage chunk is then stripped unless the client asked too), or
(``translate_guided_params``) guided_* rewritten into ``structured_outputs``. vLLM >= 0.12 silently
ignores ``guided_json``/``guided_regex``/``guided_choice``/``guided_grammar`` and answers 200 with
unconstrained output, so by default they are a 400 that names the replacement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from app.errors import InvalidRequestError

GUIDED = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice", "guided_grammar": "grammar"}
GUIDED_OPTIONS = ("guided_decoding_backend", "guided_whitespace_pattern", "guided_options_request")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One relayed OpenAI endpoint: its path, metrics route, and whether it streams and ends with usage."""
    path: str  # on the upstream, and on the gateway
    route: str  # the metrics' route label
    streams: bool  # the API has a stream form
    usage_chunk: bool  # a stream ends with a usage chunk when stream_options.include_usage


CHAT = Endpoint("/v1/chat/completions", "openai_chat", True, True)
COMPLETIONS = Endpoint("/v1/completions", "openai_completions", True, True)
EMBEDDINGS = Endpoint("/v1/embeddings", "openai_embeddings", False, False)
RESPONSES = Endpoint("/v1/responses", "openai_responses", True, False)


@dataclass(slots=True)
class Prepared:
    """A client's passthrough request, parsed and rewritten: what goes upstream and what routing and books need."""
    body: dict[str, Any]
    content: bytes  # what goes upstream
    model: str | None
    stream: bool
    client_wants_usage: bool
    messages: list[dict[str, Any]] = field(default_factory=list)  # for the prefix key
    tools: Any = None
    prompt_chars: int = 0  # for an estimate of a call cut short
    headers: dict[str, str] = field(default_factory=dict)  # the client's, forwarded

    @property
    def max_tokens(self) -> int | None:
        """What the call may generate, if the client said (for a key's token and budget reservation)."""
        return next((v for name in MAX_TOKEN_FIELDS if _positive_int(v := self.body.get(name))), None)

    @property
    def outputs(self) -> int:
        """How many completions the call makes: ``n`` (or ``best_of``) per prompt, prompts in a list."""
        body = self.body
        per_prompt = max(n if _positive_int(n := body.get("n")) else 1,
                         b if _positive_int(b := body.get("best_of")) else 1)
        prompt = body.get("prompt")
        prompts = len(prompt) if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else 1
        return per_prompt * max(1, prompts)


MAX_TOKEN_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def cap_completion(endpoint: Endpoint, prep: Prepared, default: int) -> None:
    """For a key with a token or money limit, what the call may generate must be known: a token
    bound that is not a positive integer is a 400, and a call that names none gets ``default``
    (the gateway's reservation is then an upper bound of what it spends)."""
    for name in MAX_TOKEN_FIELDS:
        value = prep.body.get(name)
        if value is not None and not _positive_int(value):
            raise InvalidRequestError(f"{name!r} must be a positive integer", status_code=400, param=name)
    if prep.max_tokens is None and endpoint is not EMBEDDINGS:
        prep.body["max_output_tokens" if endpoint is RESPONSES else "max_tokens"] = default
        prep.content = encode(prep.body)


def read(endpoint: Endpoint, raw: bytes, *, translate_guided: bool) -> Prepared:
    """The request, or a 400 in the error shape OpenAI clients parse."""
    try:
        body = msgspec.json.decode(raw)
    except (msgspec.DecodeError, UnicodeError):
        raise InvalidRequestError("request body is not valid JSON", status_code=400, type="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("request body must be a JSON object", status_code=400)
    changed = _guided(body, translate_guided)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequestError("'model' must be a string", status_code=400, param="model")
    stream_value = body.get("stream", False)
    if not isinstance(stream_value, bool) and stream_value is not None:
        raise InvalidRequestError("'stream' must be true or false", status_code=400, param="stream")
    stream = stream_value is True and endpoint.streams
    wants_usage = False
    if stream and endpoint.usage_chunk:
        options = body.get("stream_options")
        wants_usage = isinstance(options, dict) and options.get("include_usage") is True
        if not wants_usage:
            body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
            changed = True
    messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    messages = [m for m in messages if isinstance(m, dict)]
    prep = Prepared(body=body, content=raw, model=model or None, stream=stream, client_wants_usage=wants_usage,
                    messages=messages, tools=body.get("tools"), prompt_chars=_prompt_chars(body, messages))
    if changed:
        prep.content = encode(body)
    return prep


def with_model(prep: Prepared, model: str) -> None:
    """Name the model the gateway chose when the client named none."""
    if prep.model is None:
        prep.body["model"] = prep.model = model
        prep.content = encode(prep.body)


def encode(body: dict[str, Any]) -> bytes:
    """The body as compact JSON bytes."""
    return msgspec.json.encode(body)


def _guided(body: dict[str, Any], translate: bool) -> bool:
    found = [k for k in GUIDED if k in body]
    if not found:
        return False
    kind = GUIDED[found[0]]
    if not translate:
        raise InvalidRequestError(
            f"'{found[0]}' was removed in vLLM 0.12 and current servers silently ignore it (the output would not "
            f"be constrained); use \"response_format\": {{\"type\": \"json_schema\", \"json_schema\": {{...}}}} "
            f"or \"structured_outputs\": {{\"{kind}\": ...}} instead",
            status_code=400, type="unsupported_parameter", param=found[0])
    if len(found) > 1 or "structured_outputs" in body:
        raise InvalidRequestError(f"only one structured-output constraint per request, got {found}"
                                  + (" and 'structured_outputs'" if "structured_outputs" in body else ""),
                                  status_code=400, type="invalid_request", param=found[0])
    body["structured_outputs"] = {kind: body.pop(found[0])}
    for option in GUIDED_OPTIONS:
        body.pop(option, None)
    return True


def _prompt_chars(body: dict[str, Any], messages: list[dict[str, Any]]) -> int:
    if messages:
        return sum(len(str(m.get("content") or "")) for m in messages)
    total = 0
    for key in ("prompt", "input", "instructions"):
        value = body.get(key)
        if isinstance(value, str):
            total += len(value)
        elif value is not None:
            total += len(str(value))
    return total
