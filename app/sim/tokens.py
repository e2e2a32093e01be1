"""Tokenizer stand-in: deterministic, cheap, and lossless.

A token is a word with at most one leading whitespace character (`" world"`),
one punctuation or symbol character with at most one leading whitespace
character (`","`, `" {"`), or a run of whitespace. Every character belongs to
exactly one token, so joining the tokens of a text gives the text back: the
stream deltas of a completion concatenate to its non-stream content.

Prompt tokens = the tokens of every message's text (content, reasoning, tool
call names and arguments) + 4 per message + 3 to open the assistant's turn
+ the tokens of the JSON of `tools`, if any. Close enough to a chat template
for context-window checks and usage accounting; not any real model's count.
"""

from __future__ import annotations

import json
import re
from typing import Any

TOKEN_RE = re.compile(r"\s?\w+|\s?[^\w\s]|\s+")
MESSAGE_OVERHEAD = 4
ASSISTANT_PRIMING = 3


def tokenize(text: str) -> list[str]:
    return TOKEN_RE.findall(text)


def count_tokens(text: str) -> int:
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


def count_prompt_tokens(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> int:
    total = ASSISTANT_PRIMING
    for message in messages:
        total += MESSAGE_OVERHEAD + count_tokens(message_text(message))
    if tools:
        total += count_tokens(json.dumps(tools))
    return total
