"""ReAct text protocol: the fallback for upstreams without native tool calling.

The model is told to answer in this shape, which the gateway parses::

    Thought: <reasoning>
    Action: <tool name>
    Action Input: <JSON object>

and, once it knows the answer::

    Thought: <reasoning>
    Final Answer: <answer>

Tool results go back as a user message ``Observation: <result>``; ``Observation:`` is a stop
sequence so the model cannot invent one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

STOP = ["\nObservation:"]

_ACTION = re.compile(r"Action\s*:\s*(?P<name>[A-Za-z0-9_\-]+)\s*\n\s*Action\s*Input\s*:\s*(?P<args>.*)", re.S)
_FINAL = re.compile(r"Final\s*Answer\s*:\s*(?P<answer>.*)", re.S)
_THOUGHT = re.compile(r"Thought\s*:\s*(?P<thought>.*?)(?=\n\s*(?:Action|Final\s*Answer)\s*:|\Z)", re.S)


@dataclass(slots=True)
class ReactStep:
    thought: str | None
    action: str | None = None
    arguments: dict[str, Any] | None = None
    final: str | None = None
    invalid_arguments: str | None = None  # raw Action Input that is not a JSON object


def system_prompt(instructions: str | None, tools: list[dict[str, Any]]) -> str:
    lines = []
    if instructions:
        lines += [instructions, ""]
    lines += ["You can use these tools:"]
    for t in tools:
        fn = t["function"]
        lines.append(f"- {fn['name']}: {fn.get('description', '')} Arguments (JSON schema): "
                     f"{json.dumps(fn.get('parameters', {}), separators=(',', ':'))}")
    lines += [
        "",
        "To use a tool, answer exactly:",
        "Thought: <why>",
        "Action: <tool name>",
        "Action Input: <JSON object of arguments>",
        "",
        "You will get the result as 'Observation: ...'. When you know the answer, reply:",
        "Thought: <why>",
        "Final Answer: <the answer>",
    ]
    return "\n".join(lines)


def action_response_format(tools: list[dict[str, Any]], name: str | None) -> dict[str, Any]:
    """A json_schema that makes the model emit one tool call, with arguments that fit the tool's
    schema: ``name``'s, or any offered tool's (one alternative per tool)."""
    fns = [t["function"] for t in tools if name is None or t["function"]["name"] == name] or [
        t["function"] for t in tools
    ]
    # No free-text "thought": small models ramble in it until max_tokens.
    options = [
        {
            "type": "object",
            "properties": {
                "action": {"type": "string", "enum": [fn["name"]]},
                "action_input": fn.get("parameters") or {"type": "object"},
            },
            "required": ["action", "action_input"],
            "additionalProperties": False,
        }
        for fn in fns
    ]
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    return {"type": "json_schema", "json_schema": {"name": "tool_call", "schema": schema, "strict": True}}


def parse_action_json(text: str) -> ReactStep:
    """Read a reply constrained by ``action_response_format``."""
    try:
        data = json.loads(text)
        return ReactStep(thought=None, action=str(data["action"]),
                         arguments=data["action_input"] if isinstance(data["action_input"], dict) else None,
                         invalid_arguments=None if isinstance(data["action_input"], dict)
                         else json.dumps(data["action_input"]))
    except (ValueError, KeyError, TypeError, AttributeError):
        return parse(text)


def render_action(step: ReactStep) -> str:
    """A tool call written in the text protocol."""
    args = json.dumps(step.arguments) if step.arguments is not None else (step.invalid_arguments or "{}")
    thought = f"Thought: {step.thought}\n" if step.thought else ""
    return f"{thought}Action: {step.action}\nAction Input: {args}"


def parse(text: str) -> ReactStep:
    """Read one model turn. Text that follows neither form is taken as the final answer."""
    thought_m = _THOUGHT.search(text)
    thought = thought_m.group("thought").strip() if thought_m else None
    action = _ACTION.search(text)
    final = _FINAL.search(text)
    if action and (not final or action.start() < final.start()):
        raw = action.group("args").strip()
        raw = raw.split("\nObservation:", 1)[0].strip()
        try:
            args = json.loads(_first_json_object(raw))
        except ValueError:
            return ReactStep(thought=thought, action=action.group("name"), invalid_arguments=raw)
        if not isinstance(args, dict):
            return ReactStep(thought=thought, action=action.group("name"), invalid_arguments=raw)
        return ReactStep(thought=thought, action=action.group("name"), arguments=args)
    if final:
        return ReactStep(thought=thought, final=final.group("answer").strip())
    return ReactStep(thought=None, final=text.strip())


def _first_json_object(raw: str) -> str:
    """The first balanced {...} in ``raw`` (models often add text after the JSON)."""
    start = raw.find("{")
    if start < 0:
        return raw
    depth, in_str, esc = 0, False, False
    for i in range(start, len(raw)):
        c = raw[i]
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return raw[start:i + 1]
    return raw[start:]


def as_text_message(m: dict[str, Any]) -> dict[str, Any]:
    """Conversation messages for an upstream without tool support: tool turns become plain text."""
    if m.get("role") == "tool":
        return {"role": "user", "content": f"Observation: {m.get('content')}"}
    if m.get("tool_calls"):
        calls = "; ".join(f"{c['function']['name']}({c['function']['arguments']})" for c in m["tool_calls"])
        return {"role": "assistant", "content": (m.get("content") or "") + f"\n[called {calls}]"}
    return {"role": m["role"], "content": m.get("content") or ""}


_START = re.compile(r"\s*(?P<m>Thought|Action|Final\s*Answer)\s*:")
_THOUGHT_END = re.compile(r"\n\s*(?P<m>Action|Final\s*Answer)\s*:")
_MARKER = re.compile(r"(?:Action|Final\s*Answer)\s*:")
_LAST_LINE = re.compile(r"\n\s*(?P<tail>[^\n]*)\Z")
_OPENERS = ("Thought:", "Action:", "FinalAnswer:")  # as written, whitespace left out
_ENDS = ("Action:", "FinalAnswer:")


class StreamSplitter:
    """Splits a ReAct reply while it streams into what clients see: ``reasoning`` (the thought)
    and ``delta`` (the text after "Final Answer:", or a reply in neither form, which ``parse``
    takes as the answer). Only what may still become a protocol marker, and trailing whitespace
    (``parse`` strips it), is held back; ``finish`` publishes what ``parse`` kept of it."""

    def __init__(self) -> None:
        self.text = ""
        self.pos = 0  # text[:pos] is handled
        self.section: str | None = None  # None: undecided; thought, final, plain (no marker yet), quiet
        self.fresh = True  # nothing published in this section yet (its leading whitespace is skipped)
        self.sent = {"reasoning": "", "delta": ""}

    def feed(self, piece: str) -> list[tuple[str, str]]:
        self.text += piece
        out: list[tuple[str, str]] = []
        while self._advance(out):
            pass
        return out

    def finish(self, step: ReactStep) -> list[tuple[str, str]]:
        """The rest of the thought and of the answer, as ``parse`` read the whole reply."""
        out: list[tuple[str, str]] = []
        if step.thought and step.thought.startswith(self.sent["reasoning"]):
            self._out(out, "reasoning", step.thought[len(self.sent["reasoning"]):])
        if step.action is None and (step.final or "").startswith(self.sent["delta"]):
            self._out(out, "delta", (step.final or "")[len(self.sent["delta"]):])
        return out

    def _advance(self, out: list[tuple[str, str]]) -> bool:
        """Handle what can be handled of the unhandled text; True if the section changed."""
        rest = self.text[self.pos:]
        if self.section is None:
            m = _START.match(rest)
            if m:
                self._enter({"Thought": "thought", "Action": "quiet"}.get(m["m"], "final"), m.end())
                return True
            if not _may_be(rest, _OPENERS):
                self.section = "plain"
                return True
            return False
        if self.section == "thought":
            m = _THOUGHT_END.search(rest)
            if m:
                self._publish(out, "reasoning", rest[:m.start()].rstrip())
                self._enter("quiet" if m["m"] == "Action" else "final", m.end())
                return True
            end = len(rest.rstrip())
            last = _LAST_LINE.search(rest)
            if last and _may_be(last["tail"], _ENDS):
                end = min(end, len(rest[:last.start()].rstrip()))
            self._publish(out, "reasoning", rest[:end])
            self.pos += end
        elif self.section == "final":
            end = len(rest.rstrip())
            self._publish(out, "delta", rest[:end])
            self.pos += end
        elif self.section == "plain":
            if _MARKER.search(rest):
                self.section = "quiet"  # the reply takes the protocol's form after all: parse decides
                return True
            end = len(rest.rstrip())
            for i in range(max(0, end - 16), end):
                if rest[i] in "AF" and _may_be(rest[i:end], _ENDS):
                    end = len(rest[:i].rstrip())
                    break
            self._publish(out, "delta", rest[:end])
            self.pos += end
        return False

    def _enter(self, section: str, advance: int) -> None:
        self.section = section
        self.pos += advance
        self.fresh = True

    def _publish(self, out: list[tuple[str, str]], kind: str, text: str) -> None:
        if self.fresh:
            text = text.lstrip()
        if text:
            self.fresh = False
            self._out(out, kind, text)

    def _out(self, out: list[tuple[str, str]], kind: str, text: str) -> None:
        if text:
            self.sent[kind] += text
            out.append((kind, text))


def _may_be(text: str, markers: tuple[str, ...]) -> bool:
    """Whether ``text`` (whitespace aside) is the beginning of one of ``markers``."""
    squeezed = "".join(text.split())
    return any(m.startswith(squeezed) for m in markers)
