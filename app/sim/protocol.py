"""vLLM 0.33's OpenAI-compatible wire format: request validation, error bodies, response and SSE chunks."""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from app.sim.config import SimConfig
from app.sim.tokens import tokenize

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
DONE = b"data: [DONE]\n\n"


class RequestError(Exception):
    """A request vLLM would refuse; becomes an error response."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param


def error_type(status: int) -> str:
    """vLLM's `type` for a status: BadRequestError, NotFoundError, InternalServerError, ..."""
    if status == 400:
        return "BadRequestError"
    try:
        name = HTTPStatus(status).phrase.replace(" ", "").replace("-", "")
    except ValueError:
        return "APIError"
    return name if name.endswith("Error") else name + "Error"


def error_object(message: str, status: int, param: str | None = None) -> dict[str, Any]:
    """An OpenAI-style error object, as vLLM answers it."""
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": status}}


def error_body(message: str, status: int, param: str | None = None) -> bytes:
    """The error object as JSON bytes."""
    return _dumps(error_object(message, status, param)).encode()


@dataclass
class ChatRequest:
    """A parsed chat completion request: what the simulator uses of it."""
    messages: list[dict[str, Any]]
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None  # max_completion_tokens, else max_tokens
    min_tokens: int = 0
    seed: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    output_format: tuple[str, Any] | None = None  # ("json_schema", schema) | ("json_object", None) | ("choice", [...])
    enable_thinking: bool | None = None  # chat_template_kwargs.enable_thinking
    n: int = 1  # choices to sample from the one prompt (vLLM's `n`)


def int_field(body: dict[str, Any], name: str, minimum: int) -> int | None:
    """An optional integer field at least ``minimum``; anything else is a 400."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RequestError(f"`{name}` must be an integer >= {minimum}, got {value!r}", param=name)
    return value


def output_format(body: dict[str, Any]) -> tuple[str, Any] | None:
    """The structured output asked for, as (kind, spec) (json, regex, choice, grammar), or None."""
    structured = body.get("structured_outputs")
    if structured is not None:
        if not isinstance(structured, dict):
            raise RequestError("`structured_outputs` must be an object", param="structured_outputs")
        kinds = [k for k in ("json", "regex", "choice", "grammar", "json_object", "structural_tag")
                 if structured.get(k) not in (None, False)]
        if len(kinds) != 1:
            raise RequestError("You can only use one kind of constraints for structured outputs "
                               f"(got {', '.join(kinds) or 'none'}).", param="structured_outputs")
        kind = kinds[0]
        if kind == "json":
            schema = structured["json"]
            if isinstance(schema, str):
                try:
                    schema = json.loads(schema)
                except ValueError:
                    raise RequestError("structured_outputs.json is not valid JSON",
                                       param="structured_outputs") from None
            return ("json_schema", schema)
        if kind == "json_object":
            return ("json_object", None)
        if kind == "choice" and isinstance(structured["choice"], list) and structured["choice"]:
            return ("choice", [str(c) for c in structured["choice"]])
        raise RequestError(f"The simulator does not support structured_outputs.{kind}", param="structured_outputs")
    fmt = body.get("response_format")
    if fmt is None:
        return None
    fmt_type = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt_type == "text":
        return None
    if fmt_type == "json_object":
        return ("json_object", None)
    if fmt_type == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, (dict, bool)):
            raise RequestError("response_format.json_schema.schema must be a JSON schema", param="response_format")
        return ("json_schema", schema)
    raise RequestError(f"Unsupported response_format type {fmt_type!r}", param="response_format")


def parse_tools(body: dict[str, Any], config: SimConfig) -> tuple[list[dict[str, Any]] | None, Any]:
    """The request's tools and tool choice, checked as vLLM checks them."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if tools is not None:
        if not isinstance(tools, list) or not tools:
            raise RequestError("`tools` must be a non-empty list; omit the field when there are no tools.",
                               param="tools")
        for tool in tools:
            function = tool.get("function") if isinstance(tool, dict) else None
            if tool.get("type", "function") != "function" or not isinstance(function, dict) \
                    or not isinstance(function.get("name"), str):
                raise RequestError("Each tool must be {'type': 'function', 'function': {'name': ...}}",
                                   param="tools")
    if choice is None:
        choice = "auto" if tools else "none"
    if isinstance(choice, dict):
        name = choice.get("function", {}).get("name") if isinstance(choice.get("function"), dict) else None
        if not isinstance(name, str):
            raise RequestError("tool_choice must name a function", param="tool_choice")
        if not tools:
            raise RequestError("When using `tool_choice`, `tools` must be set.", param="tool_choice")
        if name not in {t["function"]["name"] for t in tools}:
            raise RequestError(f"Tool '{name}' has not been passed in `tools`.", param="tool_choice")
        return tools, choice
    if choice not in ("none", "auto", "required"):
        raise RequestError(f"Invalid tool_choice {choice!r}", param="tool_choice")
    if choice == "required" and not tools:
        raise RequestError("When using `tool_choice`, `tools` must be set.", param="tool_choice")
    if choice == "auto" and tools and not config.enable_auto_tool_choice:
        raise RequestError('"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set',
                           param="tool_choice")
    return tools, choice


def load_body(raw: bytes, config: SimConfig) -> dict[str, Any]:
    """The request body as a JSON object, its `model` checked (absent: the served model)."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise RequestError(f"JSON decode error: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != config.model:
        raise RequestError(f"The model `{model}` does not exist.", status=404, param="model")
    return body


MAX_N = 128  # choices per request the simulator samples


def stream_flags(body: dict[str, Any], *, allow_n: bool = False) -> tuple[bool, bool]:
    """(stream, stream_options.include_usage), checked as vLLM does; refuses n > 1 unless ``allow_n``
    (chat completions sample n choices; the other endpoints make one per prompt)."""
    stream = bool(body.get("stream") or False)
    options = body.get("stream_options")
    if options is not None and not stream:
        raise RequestError("Stream options can only be defined when `stream=True`.", param="stream_options")
    if not allow_n and body.get("n") not in (None, 1):
        raise RequestError("The simulator supports only n=1 here", param="n")
    return stream, bool(isinstance(options, dict) and options.get("include_usage"))


def n_field(body: dict[str, Any]) -> int:
    """`n`: how many choices to sample (1 to ``MAX_N``)."""
    n = int_field(body, "n", 1)
    if n is not None and n > MAX_N:
        raise RequestError(f"`n` must be at most {MAX_N}, got {n}", param="n")
    return n or 1


def seed_field(body: dict[str, Any]) -> int | None:
    """The optional integer seed; anything else is a 400."""
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError("`seed` must be an integer", param="seed")
    return seed


def _is_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value)


def parse_prompts(body: dict[str, Any], param: str) -> list[tuple[str, list[str]]]:
    """`prompt` / `input`: a string, a list of strings, a list of token ids or a list of such lists.

    Returns (text, tokens) per prompt; a token-id prompt's text is its ids, space-separated.
    """
    value = body.get(param)
    if value is None:
        raise RequestError(f"`{param}` is required", param=param)
    if isinstance(value, str) or _is_ids(value):
        value = [value]
    if not isinstance(value, list) or not value:
        raise RequestError(f"`{param}` must be a string, a list of strings or a list of token ids", param=param)
    prompts = []
    for item in value:
        if isinstance(item, str):
            prompts.append((item, tokenize(item)))
        elif _is_ids(item):
            prompts.append((" ".join(map(str, item)), [str(i) for i in item]))
        else:
            raise RequestError(f"`{param}` must be a string, a list of strings or a list of token ids", param=param)
        if not prompts[-1][1]:
            raise RequestError("The decoder prompt cannot be empty", param=param)
    return prompts


def parse_chat_request(raw: bytes, config: SimConfig) -> ChatRequest:
    """Parse and check a chat completion request body."""
    body = load_body(raw, config)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages \
            or not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        raise RequestError("`messages` must be a non-empty list of messages with a `role`", param="messages")
    stream, include_usage = stream_flags(body, allow_n=True)
    max_completion = int_field(body, "max_completion_tokens", 1)
    max_tokens = int_field(body, "max_tokens", 1)
    kwargs = body.get("chat_template_kwargs")
    thinking = kwargs.get("enable_thinking") if isinstance(kwargs, dict) else None
    tools, tool_choice = parse_tools(body, config)
    return ChatRequest(
        messages=messages,
        stream=stream,
        include_usage=include_usage,
        max_tokens=max_completion if max_completion is not None else max_tokens,
        min_tokens=int_field(body, "min_tokens", 0) or 0,
        seed=seed_field(body),
        tools=tools,
        tool_choice=tool_choice,
        output_format=output_format(body),
        enable_thinking=thinking if isinstance(thinking, bool) else None,
        n=n_field(body),
    )


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """A usage object for these token counts."""
    return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens}


def completion_body(completion_id: str, created: int, model: str, choices: list[tuple[dict[str, Any], str]],
                    usage_: dict[str, int]) -> bytes:
    """A `chat.completion`: one choice per (message, finish_reason), indexed in order."""
    return _dumps({
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": i, "message": message, "logprobs": None, "finish_reason": finish_reason,
                     "stop_reason": None} for i, (message, finish_reason) in enumerate(choices)],
        "usage": usage_,
    }).encode()


class ChunkRenderer:
    """Builds `data: {...}\\n\\n` events of one stream from a pre-rendered prefix (fast)."""

    def __init__(self, completion_id: str, created: int, model: str, obj: str = "chat.completion.chunk") -> None:
        self._base = (f'{{"id":{_dumps(completion_id)},"object":{_dumps(obj)},'
                      f'"created":{created},"model":{_dumps(model)},')
        self._head = f"data: {self._base}" + '"choices":[{"index":0,"delta":'
        self._choice = f"data: {self._base}" + '"choices":[{"index":'

    def delta(self, delta_json: str, finish_reason: str | None = None, index: int = 0) -> str:
        """One chat chunk with the given delta JSON and finish reason, as an SSE data line."""
        finish = "null" if finish_reason is None else f'"{finish_reason}"'
        head = self._head if index == 0 else f'{self._choice}{index},"delta":'
        return f'{head}{delta_json},"logprobs":null,"finish_reason":{finish}}}]}}\n\n'

    def text(self, index: int, text: str, finish_reason: str | None = None) -> str:
        """A `text_completion` chunk (/v1/completions): the finish_reason rides on the last token's chunk."""
        finish = "null" if finish_reason is None else f'"{finish_reason}"'
        return (f'{self._choice}{index},"text":{_dumps(text)},"logprobs":null,"finish_reason":{finish},'
                f'"stop_reason":null}}]}}\n\n')

    def role(self, index: int = 0) -> str:
        """The chunk that opens a choice: the assistant role and empty content."""
        return self.delta('{"role":"assistant","content":""}', index=index)

    def usage(self, usage_: dict[str, int]) -> str:
        """The usage-only chunk that ends a stream with include_usage."""
        return f'data: {self._base}"choices":[],"usage":{_dumps(usage_)}}}\n\n'

    @staticmethod
    def error(message: str, status: int) -> str:
        """An error as an SSE data line."""
        return f"data: {_dumps(error_object(message, status))}\n\n"


def dumps(value: Any) -> str:
    """Compact JSON text."""
    return _dumps(value)
