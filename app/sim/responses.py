"""POST /v1/responses (the OpenAI Responses API), as vLLM 0.33 serves it without a response store.

Request: `input` (a string, or a list of items: messages `{"role", "content"}` whose content is a
string or `input_text`/`output_text` parts, `function_call` and `function_call_output` items;
`reasoning` items are skipped), `instructions` (a system message first), `max_output_tokens`,
`tools` (function tools, flat: `{"type": "function", "name", "parameters"}`) with `tool_choice`,
`text.format` (`json_schema` / `json_object`: structured outputs), `seed`, `stream`. The model
answers as it would the equivalent chat request (same rules, same generator); `x-sim-reasoning`
or SimConfig.reasoning adds a reasoning item. `previous_response_id` and non-function tools are 400s.

Answer: `{"id": "resp_…", "object": "response", "created_at", "status": "completed"` (or
`"incomplete"` with `incomplete_details.reason = "max_output_tokens"`)`, "output": [items],
"usage": {"input_tokens", "output_tokens", "total_tokens", …}, …}`; items are `reasoning`,
`message` (one `output_text` part) and `function_call` (`call_id`, `name`, `arguments`).

Stream: SSE events with `event: <type>` and `data: {json}` lines (no `[DONE]`), numbered by
`sequence_number`: `response.created`, `response.in_progress`, then per output item
`response.output_item.added`, its deltas (`response.reasoning_text.delta`, or
`response.content_part.added`, `response.output_text.delta`…, or
`response.function_call_arguments.delta`…), their `.done` events and `response.output_item.done`,
then `response.completed` with the whole response and its usage. An error after the stream started
is an `error` event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.sim.completion import ARGS, CALL, CONTENT, REASONING, Completion, build_completion
from app.sim.job import Call, Job, Piece
from app.sim.protocol import (
    ChatRequest,
    RequestError,
    dumps,
    int_field,
    load_body,
    output_format,
    parse_tools,
    seed_field,
)
from app.sim.tools import ToolCall

_ITEM_TYPES = {REASONING: "reasoning", CONTENT: "message", CALL: "function_call", ARGS: "function_call"}


@dataclass
class _Item:
    """One output item, and the text of its pieces."""

    type: str
    id: str
    call: ToolCall | None = None
    parts: list[str] = field(default_factory=list)

    def render(self, done: bool = True) -> dict[str, Any]:
        status = "completed" if done else "in_progress"
        text = "".join(self.parts) if done else ""
        if self.type == "reasoning":
            item: dict[str, Any] = {"id": self.id, "type": "reasoning", "summary": [], "status": status}
            if done:
                item["content"] = [{"type": "reasoning_text", "text": text}]
            return item
        if self.type == "message":
            return {"id": self.id, "type": "message", "role": "assistant", "status": status,
                    "content": [_output_text(text)] if done else []}
        assert self.call is not None
        return {"id": self.id, "type": "function_call", "call_id": _call_id(self.call), "name": self.call.name,
                "arguments": text, "status": status}


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _call_id(call: ToolCall) -> str:
    return "call_" + call.id.removeprefix("chatcmpl-tool-")


def _items(completion: Completion, response_id: str) -> tuple[list[_Item], list[int]]:
    """The output items of a completion, and the item each piece belongs to."""
    items: list[_Item] = []
    owner: list[int] = []
    key = None
    for kind, index, text in completion.pieces:
        item_type = _ITEM_TYPES[kind]
        if (item_type, index) != key:
            key = (item_type, index)
            prefix = {"reasoning": "rs", "message": "msg", "function_call": "fc"}[item_type]
            call = completion.tool_calls[index] if item_type == "function_call" else None
            items.append(_Item(item_type, f"{prefix}_{response_id[5:]}_{len(items)}", call))
        if kind != CALL:
            items[-1].parts.append(text)
        owner.append(len(items) - 1)
    return items, owner


class ResponsesWriter:
    """Renders a Responses API answer (/v1/responses), as one body or as its typed events."""
    def __init__(self, response_id: str, created: int, model: str, completion: Completion,
                 echo: dict[str, Any]) -> None:
        self.response_id, self.created, self.model = response_id, created, model
        self.completion = completion
        self.echo = echo  # request fields the response repeats
        self.items, self.owner = _items(completion, response_id)
        self.sequence = 0
        self.seen = 0  # pieces streamed
        self.open: int | None = None  # the item being streamed

    def response(self, done: bool, prompt_tokens: int = 0, completion_tokens: int = 0) -> dict[str, Any]:
        """The response object, in progress or completed with its output and usage."""
        status = "in_progress"
        if done:
            status = "incomplete" if self.completion.finish_reason == "length" else "completed"
        reasoning = sum(1 for kind, _, _ in self.completion.pieces if kind == REASONING)
        return {
            "id": self.response_id, "object": "response", "created_at": self.created, "model": self.model,
            "status": status, "background": False, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "output": [item.render() for item in self.items] if done else [],
            "parallel_tool_calls": True, "previous_response_id": None, "reasoning": None,
            "service_tier": "auto", "store": False, "truncation": "disabled", "user": None, **self.echo,
            "usage": {
                "input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": completion_tokens, "output_tokens_details": {"reasoning_tokens": reasoning},
                "total_tokens": prompt_tokens + completion_tokens,
            } if done else None,
        }

    def body(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The non-stream response body."""
        return dumps(self.response(True, prompt_tokens, completion_tokens)).encode()

    def _event(self, kind: str, **data: Any) -> str:
        event = f"event: {kind}\ndata: {dumps({'type': kind, **data, 'sequence_number': self.sequence})}\n\n"
        self.sequence += 1
        return event

    def start(self) -> list[str]:
        """The events that open a stream: response.created and response.in_progress."""
        return [self._event("response.created", response=self.response(False)),
                self._event("response.in_progress", response=self.response(False))]

    def _opened(self, i: int) -> list[str]:
        item = self.items[i]
        events = [self._event("response.output_item.added", output_index=i, item=item.render(done=False))]
        if item.type != "function_call":
            part = _output_text("") if item.type == "message" else {"type": "reasoning_text", "text": ""}
            events.append(self._event("response.content_part.added", item_id=item.id, output_index=i,
                                      content_index=0, part=part))
        return events

    def _closed(self, i: int) -> list[str]:
        item = self.items[i]
        text = "".join(item.parts)
        where = {"item_id": item.id, "output_index": i}
        if item.type == "function_call":
            assert item.call is not None
            events = [self._event("response.function_call_arguments.done", **where, name=item.call.name,
                                  arguments=text)]
        elif item.type == "message":
            events = [self._event("response.output_text.done", **where, content_index=0, text=text, logprobs=[]),
                      self._event("response.content_part.done", **where, content_index=0, part=_output_text(text))]
        else:
            part = {"type": "reasoning_text", "text": text}
            events = [self._event("response.reasoning_text.done", **where, content_index=0, text=text),
                      self._event("response.content_part.done", **where, content_index=0, part=part)]
        events.append(self._event("response.output_item.done", output_index=i, item=item.render()))
        return events

    def _piece(self, piece: Piece, i: int) -> list[str]:
        kind, _, text = piece
        where = {"item_id": self.items[i].id, "output_index": i}
        if kind == CONTENT:
            return [self._event("response.output_text.delta", **where, content_index=0, delta=text, logprobs=[])]
        if kind == REASONING:
            return [self._event("response.reasoning_text.delta", **where, content_index=0, delta=text)]
        if kind == ARGS:
            return [self._event("response.function_call_arguments.delta", **where, delta=text)]
        return []  # a call's opening: its output_item.added says it all

    def delta(self, index: int, pieces: list[Piece], finished: bool) -> list[str]:
        """The events for new pieces: output items opened, text and reasoning deltas, function calls."""
        events: list[str] = []
        for piece in pieces:
            i = self.owner[self.seen]
            self.seen += 1
            if i != self.open:
                if self.open is not None:
                    events += self._closed(self.open)
                self.open = i
                events += self._opened(i)
            events += self._piece(piece, i)
        if finished and self.open is not None:
            events += self._closed(self.open)
            self.open = None
        return events

    def end(self, prompt_tokens: int, completion_tokens: int) -> list[str]:
        """The event that closes a stream: response.completed with usage."""
        return [self._event("response.completed", response=self.response(True, prompt_tokens, completion_tokens))]

    def error(self, message: str, status: int) -> list[str]:
        """An error event mid-stream."""
        return [self._event("error", code="server_error" if status >= 500 else "invalid_request_error",
                            message=message, param=None)]


def _message(item: Any) -> dict[str, Any] | None:
    """One input item as a chat message (None: an item the model does not see)."""
    if not isinstance(item, dict):
        raise RequestError("Each `input` item must be an object", param="input")
    kind = item.get("type", "message")
    if kind == "message" and isinstance(item.get("role"), str):
        return {"role": item["role"], "content": item.get("content")}
    if kind == "function_call":
        call = {"id": item.get("call_id"), "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments", "")}}
        return {"role": "assistant", "content": None, "tool_calls": [call]}
    if kind == "function_call_output":
        output = item.get("output")
        return {"role": "tool", "tool_call_id": item.get("call_id"),
                "content": output if isinstance(output, str) else dumps(output)}
    if kind == "reasoning":
        return None
    raise RequestError(f"The simulator does not support input items of type {kind!r}", param="input")


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    value = body.get("input")
    if isinstance(value, str) and value:
        messages = [{"role": "user", "content": value}]
    elif isinstance(value, list) and value:
        messages = [m for m in map(_message, value) if m is not None]
    else:
        raise RequestError("`input` must be a non-empty string or list of input items", param="input")
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.insert(0, {"role": "system", "content": instructions})
    if not messages:
        raise RequestError("`input` holds no message", param="input")
    return messages


def _chat_tools(body: dict[str, Any]) -> dict[str, Any]:
    """`tools` and `tool_choice` in the chat format, for the chat rules and their checks."""
    out: dict[str, Any] = {}
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(isinstance(t, dict) and t.get("type") == "function" for t in tools):
            raise RequestError("The simulator supports only function tools", param="tools")
        if tools:  # [] is no tools here (the SDK's default), unlike chat
            out["tools"] = [{"type": "function", "function": {k: v for k, v in t.items() if k != "type"}}
                            for t in tools]
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function":
        choice = {"type": "function", "function": {"name": choice.get("name")}}
    if choice is not None:
        out["tool_choice"] = choice
    return out


def _text_format(body: dict[str, Any]) -> tuple[str, Any] | None:
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_schema":  # flat here: {"type", "name", "schema", "strict"}
        fmt = {"type": "json_schema", "json_schema": {"name": fmt.get("name"), "schema": fmt.get("schema")}}
    return output_format({"response_format": fmt})


def responses_job(call: Call) -> Job:
    """A /v1/responses request as an engine job."""
    config = call.config
    body = load_body(call.raw, config)
    if body.get("previous_response_id") is not None:
        raise RequestError("The simulator stores no responses: `previous_response_id` is not supported",
                           param="previous_response_id")
    tools, tool_choice = parse_tools(_chat_tools(body), config)
    req = ChatRequest(messages=_messages(body), stream=bool(body.get("stream")),
                      max_tokens=int_field(body, "max_output_tokens", 1), seed=seed_field(body), tools=tools,
                      tool_choice=tool_choice, output_format=_text_format(body))
    completion = build_completion(req, config, call.thinking(None))
    echo = {"instructions": body.get("instructions"), "max_output_tokens": req.max_tokens,
            "metadata": body.get("metadata") or {}, "temperature": body.get("temperature", 1.0),
            "top_p": body.get("top_p", 1.0), "text": body.get("text") or {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or []}
    writer = ResponsesWriter(call.response_id("resp_"), call.created, config.model, completion, echo)
    return Job([completion], writer, req.stream)
