"""What the simulated model answers: one completion as a list of token pieces.

Order of decisions for a request:

1. Tool calls, by the rules in tools.py -> finish_reason `tool_calls`.
2. Else, if the last message is a tool result -> `Result: <content>` lines.
3. Else, structured outputs (`json_schema` / `structured_outputs.json` -> JSON
   that validates; `json_object` -> `{"answer": ...}`; `choice` -> one choice);
   under the `bad_output` fault, a reply that breaks them (below).
4. Else plain text: a few sentences about the last user message's topics,
   at least `min_tokens` long, exactly `SimConfig.output_tokens` if set.

With reasoning on, reasoning text comes first. The pieces are cut at the
limit, min(max_completion_tokens or max_tokens, max_model_len - prompt tokens),
and the finish_reason is then `length` (a cut tool call keeps its partial
arguments, a cut JSON is invalid, as with a real model).

One piece is one completion token and one stream chunk: a reasoning or content
token, a tool call's opening (id and name), or a token of its arguments.

Choices (vLLM's `n`): choice `sample` of a request draws from its own generator, seeded by the
request and the index (choice 0's is the one an n=1 request gets), so the n choices differ and each
is the same on every run.

`bad_output` (a fault, faults.py) makes a structured reply break its format, as a model served
without structured outputs would: `text` ignores it (plain text, not JSON); `type` writes the JSON
with its first property's value of the wrong type (a number for a string, else a string).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from app.sim.config import SimConfig
from app.sim.generate import (
    instance_for_schema,
    phrase,
    plain_text,
    reasoning_text,
    seeded_rng,
    topics,
)
from app.sim.prefix_cache import block_hashes
from app.sim.protocol import ChatRequest, RequestError, dumps
from app.sim.tokens import content_text, prompt_tokens, tokenize
from app.sim.tools import ToolCall, plan_tool_calls, tool_results_text

REASONING, CONTENT, CALL, ARGS = "reasoning", "content", "call", "args"


@dataclass
class Completion:
    """One planned completion: its prompt's tokens and cache blocks, the pieces to emit, how it finishes."""
    prompt_tokens: int
    prompt_blocks: list[int]  # prefix-cache block hashes of the prompt
    pieces: list[tuple[str, int, str]]  # (kind, tool call index, text)
    tool_calls: list[ToolCall]
    finish_reason: str

    def message(self) -> dict[str, Any]:
        """The non-stream `message`: the same pieces, joined."""
        reasoning = "".join(text for kind, _, text in self.pieces if kind == REASONING)
        content = [text for kind, _, text in self.pieces if kind == CONTENT]
        arguments: dict[int, list[str]] = {}
        for kind, index, text in self.pieces:
            if kind == CALL:
                arguments[index] = []
            elif kind == ARGS:
                arguments[index].append(text)
        calls = [{"id": self.tool_calls[i].id, "type": "function",
                  "function": {"name": self.tool_calls[i].name, "arguments": "".join(parts)}}
                 for i, parts in arguments.items()]
        message: dict[str, Any] = {"role": "assistant", "content": "".join(content) if content else None,
                                   "tool_calls": calls}
        if reasoning:
            message["reasoning"] = reasoning
        return message

    def delta(self, piece: tuple[str, int, str]) -> str:
        """The stream `delta` JSON of one piece."""
        kind, index, text = piece
        if kind == CONTENT:
            return f'{{"content":{dumps(text)}}}'
        if kind == REASONING:
            return f'{{"reasoning":{dumps(text)}}}'
        if kind == ARGS:
            return f'{{"tool_calls":[{{"index":{index},"function":{{"arguments":{dumps(text)}}}}}]}}'
        call = self.tool_calls[index]
        return (f'{{"tool_calls":[{{"index":{index},"id":{dumps(call.id)},"type":"function",'
                f'"function":{{"name":{dumps(call.name)},"arguments":""}}}}]}}')


BAD_OUTPUTS = ("text", "type")


def _answer(req: ChatRequest, config: SimConfig, rng: Any, words: list[str],
            bad_output: str | None = None) -> tuple[list[str], str]:
    """Content tokens for a turn without tool calls, and the plan for the reasoning text."""
    results = tool_results_text(req.messages)
    if results is not None:
        return tokenize(results), "The tool returned its result, so I can answer now."
    if req.output_format is not None and bad_output != "text":
        kind, spec = req.output_format
        if kind == "choice":
            return tokenize(rng.choice(spec)), "I must pick one of the given choices."
        value = {"answer": phrase(rng, words)} if kind == "json_object" else _schema_instance(spec, rng, words)
        if bad_output == "type":
            value = _wrong_type(value)
        return tokenize(json.dumps(value, ensure_ascii=False)), "I will answer in the requested JSON format."
    fixed = config.output_tokens
    tokens = tokenize(plain_text(rng, words, max(req.min_tokens, fixed or 0)))
    return (tokens[:fixed] if fixed else tokens), "I will answer directly."


def _wrong_type(value: Any) -> Any:
    """The object with its first property's value of another JSON type (anything else as it is)."""
    if not isinstance(value, dict) or not value:
        return "not the requested JSON"
    first = next(iter(value))
    return {**value, first: 12345 if isinstance(value[first], str) else "not a valid value"}


def _schema_instance(schema: Any, rng: Any, words: list[str]) -> Any:
    try:
        return instance_for_schema(schema, rng, words)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise RequestError(f"The simulator cannot satisfy this JSON schema: {exc}",
                           param="response_format") from None


def build_completion(req: ChatRequest, config: SimConfig, reasoning: bool,
                     prompt: list[str] | None = None, *, sample: int = 0,
                     bad_output: str | None = None) -> Completion:
    """What the model answers to `req` as its choice `sample`; `prompt` (tokens) replaces the chat
    template's rendering; `bad_output` (text, type) breaks a structured reply."""
    if prompt is None:
        prompt = prompt_tokens(req.messages, req.tools)
    n_prompt = len(prompt)
    if n_prompt >= config.max_model_len:
        raise RequestError(
            f"This model's maximum context length is {config.max_model_len} tokens. However, your prompt "
            f"contains {n_prompt} input tokens. Please reduce the length of the input messages.",
            param="messages")
    seed = config.seed if req.seed is None else req.seed
    key = json.dumps(req.messages, sort_keys=True)
    rng = seeded_rng(seed, key if sample == 0 else f"{key}\0choice {sample}")
    users = [m for m in req.messages if m.get("role") == "user"]
    words = topics(content_text(users[-1]) if users else " ".join(content_text(m) for m in req.messages))

    try:
        calls = plan_tool_calls(req.messages, req.tools, req.tool_choice, rng, words)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise RequestError(f"The simulator cannot build arguments for this tool schema: {exc}",
                           param="tools") from None
    pieces: list[tuple[str, int, str]] = []
    if calls:
        names = ", ".join(f"`{c.name}`" for c in calls)
        plan = f"I should call {names} to answer this."
        for index, call in enumerate(calls):
            pieces.append((CALL, index, call.name))
            pieces.extend((ARGS, index, token) for token in tokenize(call.arguments))
    else:
        content, plan = _answer(req, config, rng, words, bad_output)
        pieces.extend((CONTENT, 0, token) for token in content)
    if reasoning:
        pieces[:0] = [(REASONING, 0, token) for token in tokenize(reasoning_text(rng, words, plan))]

    limit = config.max_model_len - n_prompt
    if req.max_tokens is not None:
        limit = min(limit, req.max_tokens)
    blocks = block_hashes(prompt)
    if len(pieces) > limit:
        return Completion(n_prompt, blocks, pieces[:limit], calls, "length")
    return Completion(n_prompt, blocks, pieces, calls, "tool_calls" if calls else "stop")
