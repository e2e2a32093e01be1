"""The prefix key a call is routed by (``choice.Chooser``'s affinity).

What repeats across calls, and so sits in vLLM's prefix cache: the model, the tools (rendered into
the prompt first) and the leading system messages — a /predict signature's instructions, an agent's
system prompt — or, for a chat without one, its first turn. A client's session header replaces all
of it: its calls go together. Python's ``hash`` suffices: the key lives in this process only.
"""

from __future__ import annotations

from typing import Any


def prefix_key(model: str, messages: list[dict[str, Any]], tools: Any, session: str | None) -> int | None:
    """A hash of what makes calls share vLLM's prefix cache (the session, or the system prompt and tools), or None."""
    if session is not None:
        return hash(("session", model, session))
    lead: list[Any] = []
    for m in messages:
        if m.get("role") not in ("system", "developer"):
            break
        lead.append(_content(m))
    if not lead:
        if len(messages) < 2:
            return None  # a one-turn chat: nothing that another call shares
        lead.append(_content(messages[0]))
    return hash((model, repr(tools) if tools else None, *lead))


def _content(message: dict[str, Any]) -> Any:
    content = message.get("content")
    return content if isinstance(content, str) else repr(content)
