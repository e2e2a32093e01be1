"""Tokenizer stand-in: deterministic, cheap, and lossless.

A token is a word with at most one leading whitespace character (`" world"`),
one punctuation or symbol character with at most one leading whitespace
character (`","`, `" {"`), or a run of whitespace. Every character belongs to
exactly one token, so joining the tokens of a text gives the text back: the
stream deltas of a completion concatenate to its non-stream content.

The prompt is rendered like a ChatML template: the tokens of the JSON of
`tools` (if any), then per message `<|im_start|>`, the role, a newline, the
tokens of its text (content, reasoning, tool call names and arguments) and
`<|im_end|>` (4 tokens of overhead), then 3 tokens opening the assistant's
turn. Close enough for context-window checks, usage accounting and prefix
caching; not any real model's count.
"""

from __future__ import annotations

import json
import re
from typing import Any

TOKEN_RE = re.compile(r"\s?\w+|\s?[^\w\s]|\s+")


def tokenize(text: str) -> list[str]:
    """The text split into the simulator's tokens: words (with a leading space), punctuation marks, whitespace runs."""
    return TOKEN_RE.findall(text)


def count_tokens(text: str) -> int:
    """How many tokens the text is."""
    return len(TOKEN_RE.findall(text))


def message_text(message: dict[str, Any]) -> str:
    """The text a chat template would render for one message (content parts joined)."""
    parts: list[str] = []
    content = message.get("content")
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
    for key in ("reasoning", "reasoning_content"):
        if isinstance(message.get(key), str):
            parts.append(message[key])
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            parts.append(f"{function.get('name', '')} {function.get('arguments', '')}")
    return "\n".join(parts)


def content_text(message: dict[str, Any]) -> str:
    """Only the content of a message (string or text parts), for the tool rules and topics."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def prompt_tokens(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[str]:
    """The prompt as tokens, as the chat template would render it (see the module docstring)."""
    tokens: list[str] = tokenize(json.dumps(tools)) if tools else []
    for message in messages:
        tokens += ("<|im_start|>", str(message.get("role")), "\n")
        tokens += TOKEN_RE.findall(message_text(message))
        tokens.append("<|im_end|>")
    tokens += ("<|im_start|>", "assistant", "\n")
    return tokens


def count_prompt_tokens(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> int:
    """How many tokens a chat prompt is, its template and tools included."""
    return len(prompt_tokens(messages, tools))
