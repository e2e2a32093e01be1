"""Tool-call rules: when the simulated model calls a tool, and with which arguments.

Rules, applied to a request that offers `tools` (OpenAI format):

1. `tool_choice: "none"` -> never call a tool.
2. Directives. If the LAST message is a user message, each of its lines of the
   form `CALL <tool_name> <json-object>` is one tool call with exactly those
   arguments (several lines = parallel calls in one response). Names of tools
   that were not offered, and lines whose JSON is not an object, are ignored.
3. Loop. If there is no directive and the last message is a user or a tool
   message, each line `ALWAYS CALL <tool_name> <json-object>` found in a
   system/developer message or in the first user message is a call: a model that
   never stops calling tools, to test an agent's step limit.
4. Forced choice. `tool_choice: {"type": "function", "function": {"name": X}}`
   keeps only the calls to X from rules 2-3, or calls X once; `"required"`
   keeps the calls from rules 2-3, or calls the first offered tool once. A
   call made by this rule gets arguments generated from the tool's
   `parameters` JSON schema.
5. Otherwise (`"auto"` or no `tool_choice`) no tool is called.

Calls end the turn with finish_reason `tool_calls`. When no tool is called and
the last message is a tool result, the answer is `Result: <content>`, one line
per trailing tool message. Call ids are `chatcmpl-tool-<32 hex>`, drawn from
the request's seeded generator; arguments are JSON text (`json.dumps`).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Any

from app.sim.generate import instance_for_schema
from app.sim.tokens import content_text

_CALL_RE = re.compile(r"^[ \t]*CALL[ \t]+(\S+)[ \t]+(\{.*\})[ \t]*$", re.M)
_ALWAYS_RE = re.compile(r"^[ \t]*ALWAYS CALL[ \t]+(\S+)[ \t]+(\{.*\})[ \t]*$", re.M)


@dataclass(frozen=True)
class ToolCall:
    """A tool call the simulated model makes: its id, the tool and the arguments."""
    id: str
    name: str
    arguments: str  # JSON text


def _directives(text: str, pattern: re.Pattern[str], offered: dict[str, Any]) -> list[tuple[str, Any]]:
    calls = []
    for name, raw in pattern.findall(text):
        if name not in offered:
            continue
        try:
            args = json.loads(raw)
        except ValueError:
            continue
        if isinstance(args, dict):
            calls.append((name, args))
    return calls


def _loop_directives(messages: list[dict[str, Any]], offered: dict[str, Any]) -> list[tuple[str, Any]]:
    texts = [content_text(m) for m in messages if m.get("role") in ("system", "developer")]
    first_user = next((m for m in messages if m.get("role") == "user"), None)
    if first_user is not None:
        texts.append(content_text(first_user))
    return [call for text in texts for call in _directives(text, _ALWAYS_RE, offered)]


def plan_tool_calls(
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    tool_choice: str | dict[str, Any] | None,
    rng: random.Random,
    words: list[str],
) -> list[ToolCall]:
    """The calls the simulated model makes this turn (empty: it answers in text)."""
    if not tools or tool_choice == "none":
        return []
    offered = {t["function"]["name"]: t["function"] for t in tools}
    role = messages[-1].get("role")
    wanted = _directives(content_text(messages[-1]), _CALL_RE, offered) if role == "user" else []
    if not wanted and role in ("user", "tool"):
        wanted = _loop_directives(messages, offered)
    if isinstance(tool_choice, dict):
        forced = tool_choice["function"]["name"]
        wanted = [call for call in wanted if call[0] == forced] or [(forced, None)]
    elif tool_choice == "required" and not wanted:
        wanted = [(next(iter(offered)), None)]
    calls = []
    for name, args in wanted:
        if args is None:
            schema = offered[name].get("parameters") or {"type": "object", "properties": {}}
            args = instance_for_schema(schema, rng, words)
            if not isinstance(args, dict):
                args = {}
        call_id = f"chatcmpl-tool-{rng.getrandbits(128):032x}"
        calls.append(ToolCall(call_id, name, json.dumps(args, ensure_ascii=False, separators=(", ", ": "))))
    return calls


def tool_results_text(messages: list[dict[str, Any]]) -> str | None:
    """`Result: <content>` for each tool message at the end of the conversation, or None."""
    results = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        results.append(f"Result: {content_text(message)}")
    return "\n".join(reversed(results)) if results else None
