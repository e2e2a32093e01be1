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

# The markers, in any case (small models write "final answer:"), as words ("transaction:" is none),
# with at most _GAP whitespace characters inside ("Final\n  Answer :"): bounded, so that a marker
# has a longest form and the stream splitter, which looks back that far, sees each one parse sees.
_GAP = 8
_WS = rf"\s{{0,{_GAP}}}"
_ACTION_WORD = rf"Action{_WS}:"
_FINAL_WORDS = rf"Final{_WS}Answer"
_ACTION = re.compile(rf"\b{_ACTION_WORD}\s*(?P<name>[A-Za-z0-9_\-]+)\s*\n\s*Action{_WS}Input{_WS}:\s*(?P<args>.*)",
                     re.S | re.I)
_FINAL = re.compile(rf"\b{_FINAL_WORDS}{_WS}:\s*(?P<answer>.*)", re.S | re.I)
_MARKER = re.compile(rf"\b(?P<m>Action|{_FINAL_WORDS}){_WS}:", re.I)  # where a thought ends
_THOUGHT = re.compile(rf"\bThought{_WS}:", re.I)


@dataclass(slots=True)
class ReactStep:
    """One parsed ReAct reply: its thought, and an action with arguments or a final answer."""
    thought: str | None
    action: str | None = None
    arguments: dict[str, Any] | None = None
    final: str | None = None
    invalid_arguments: str | None = None  # raw Action Input that is not a JSON object


def system_prompt(instructions: str | None, tools: list[dict[str, Any]]) -> str:
    """The ReAct system prompt: the instructions, each tool with its schema, and the reply format."""
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
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):  # nested too deeply: invalid too
        return parse(text)


def render_action(step: ReactStep) -> str:
    """A tool call written in the text protocol."""
    args = json.dumps(step.arguments) if step.arguments is not None else (step.invalid_arguments or "{}")
    thought = f"Thought: {step.thought}\n" if step.thought else ""
    return f"{thought}Action: {step.action}\nAction Input: {args}"


def parse(text: str) -> ReactStep:
    """Read one model turn. Text that follows neither form is taken as the final answer. The thought
    is the text before the first marker ("Action:", "Final Answer:"), after "Thought:" if it has one."""
    marker = _MARKER.search(text)
    thought = _thought(text[:marker.start()]) if marker else None
    action = _ACTION.search(text)
    final = _FINAL.search(text)
    if action and (not final or action.start() < final.start()):
        raw = action.group("args").strip()
        raw = raw.split("\nObservation:", 1)[0].strip()
        try:
            args = json.loads(_first_json_object(raw))
        except (ValueError, RecursionError):  # not JSON, or nested too deeply to read
            return ReactStep(thought=thought, action=action.group("name"), invalid_arguments=raw)
        if not isinstance(args, dict):
            return ReactStep(thought=thought, action=action.group("name"), invalid_arguments=raw)
        return ReactStep(thought=thought, action=action.group("name"), arguments=args)
    if final:
        return ReactStep(thought=thought, final=final.group("answer").strip())
    return ReactStep(thought=None, final=text.strip())


def _thought(head: str) -> str | None:
    """The thought in the text before the first marker."""
    m = _THOUGHT.search(head)
    return (head[m.end():] if m else head).strip() or None


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


_START = re.compile(rf"\s*Thought{_WS}:", re.I)
_OPENER = ("thought:",)  # as written, whitespace left out, in lower case
_ENDS = ("action:", "finalanswer:")
# The longest text a marker (_MARKER) can match: "Final", _GAP, "Answer", _GAP, ":".
_MARGIN = len("FinalAnswer:") + 2 * _GAP


class StreamSplitter:
    """Splits a ReAct reply while it streams into what clients see: ``reasoning`` (the thought)
    and ``delta`` (the answer: the text after "Final Answer:", or a reply in neither form, which
    ``parse`` takes as the answer). The deltas of a reply join to ``parse``'s answer, and a tool
    call's reply streams none. It finds the markers with ``parse``'s own patterns.

    A reply that starts with "Thought:" streams its thought as it comes; one that does not is held
    back until a marker shows what it was (the text before it is the thought) or until it ends
    (``finish``: all of it was the answer): text before a marker must not be shown as the answer.
    After "Final Answer:" the answer streams. Only what may still become a marker, and trailing
    whitespace (``parse`` strips it), is held back; ``finish`` publishes what ``parse`` kept of it.

    Linear in the reply's length: only the last ``_MARGIN`` characters are searched again (a
    marker is never longer), the text held back before them is kept as pieces, and a piece of
    whitespace alone, which can neither end a marker nor be published, waits for the next."""

    def __init__(self) -> None:
        self.text = ""  # the unhandled text where a marker may still begin
        self.held: list[str] = []  # unhandled text before ``text`` (held back, no marker begins in it)
        self.spaces: list[str] = []  # whitespace pieces not looked at yet
        self.before = ""  # the character before ``held`` and ``text`` (\b looks at it)
        self.section: str | None = None  # None: undecided; thought, final, plain (no marker yet), quiet
        self.fresh = True  # nothing published in this section yet (its leading whitespace is skipped)
        self.sent = {"reasoning": "", "delta": ""}

    def feed(self, piece: str) -> list[tuple[str, str]]:
        """Take the next piece of streamed text; return the (kind, text) pieces publishable so far."""
        if self.section == "quiet" or not piece:
            return []  # after "Action:", parse decides (finish)
        if piece.isspace():  # ends no marker, and trailing whitespace is never published
            self.spaces.append(piece)
            return []
        if self.spaces:
            piece = "".join(self.spaces) + piece
            self.spaces.clear()
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
        text = self.text
        if self.section is None:
            m = _START.match(text)
            if m:
                self._enter("thought", m.end())
                return True
            if not _may_be(text, _OPENER):
                self.section = "plain"
                return True
            return False
        if self.section in ("thought", "plain"):
            m = _MARKER.search(self.before + text, len(self.before))  # \b sees the character before
            if m:
                start, end = m.start() - len(self.before), m.end() - len(self.before)
                head = "".join(self.held) + text[:start]
                action = m["m"].lower() == "action"
                if self.section == "thought":
                    self._publish(out, "reasoning", head.rstrip())
                elif not action:
                    self._publish(out, "reasoning", _thought(head) or "")
                # After "Action:", parse decides (it may be no well-formed call): finish publishes.
                self._enter("quiet" if action else "final", end)
                return True
            if self.section == "thought":
                end = self._safe_end(text)
                self._publish(out, "reasoning", text[:end])
                self._consume(end)
            elif len(text) > _MARGIN:  # plain: held back whole, searched again only where a marker may begin
                cut = len(text) - _MARGIN
                self.held.append(text[:cut])
                self.before, self.text = text[cut - 1], text[cut:]
        elif self.section == "final":
            end = len(text.rstrip())
            self._publish(out, "delta", text[:end])
            self._consume(end)
        return False

    def _safe_end(self, rest: str) -> int:
        """How much of ``rest`` can be published: not its trailing whitespace, nor a word at its end
        that may still become a marker ("Fin", "Final Ans")."""
        end = len(rest.rstrip())
        for i in range(max(0, end - _MARGIN), end):
            if (rest[i] in "aAfF" and not _word_char(rest[i - 1] if i else self.before)
                    and _may_be(rest[i:end], _ENDS)):
                return len(rest[:i].rstrip())
        return end

    def _consume(self, n: int) -> None:
        """The first ``n`` characters of the unhandled text are handled."""
        if n:
            self.before, self.text = self.text[n - 1], self.text[n:]

    def _enter(self, section: str, advance: int) -> None:
        self.section = section
        self.held.clear()
        self._consume(advance)
        if section == "quiet":
            self.text = ""
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


def _word_char(c: str) -> bool:
    return c.isalnum() or c == "_"


def _may_be(text: str, markers: tuple[str, ...]) -> bool:
    """Whether ``text`` (whitespace aside, in any case) is the beginning of one of ``markers``."""
    squeezed = "".join(text.split()).lower()
    return any(m.startswith(squeezed) for m in markers)
