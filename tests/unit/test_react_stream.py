"""The ReAct splitter: what a client sees of a reply while it streams, whatever the chunking."""

from __future__ import annotations

import pytest

from app.services.agent import react

REPLIES = [
    "Thought: I know it.\nFinal Answer: 42",
    "Thought:  two\nlines  \n\nFinal   Answer:\n  The answer is 42.  \n",
    "Thought: use the tool\nAction: calculator\nAction Input: {\"expression\": \"6*7\"}",
    "Final Answer: Finally, Final answers are fine. Action items: none",
    "The sky is blue because of Rayleigh scattering. Finally, Actions speak louder than words.",
    "  A plain answer with trailing space   ",
    "Action: calculator\nAction Input: not json",
    "Thought: only a thought",
]


def split(reply: str, size: int) -> tuple[str, str, list[tuple[str, str]]]:
    s = react.StreamSplitter()
    out = []
    for i in range(0, len(reply), size):
        out += s.feed(reply[i:i + size])
    streamed = list(out)
    out += s.finish(react.parse(reply))
    text = {k: "".join(t for kind, t in out if kind == k) for k in ("reasoning", "delta")}
    return text["reasoning"], text["delta"], streamed


@pytest.mark.parametrize("reply", REPLIES)
@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_streamed_text_is_what_parse_reads(reply, size):
    parsed = react.parse(reply)
    reasoning, delta, _ = split(reply, size)
    assert delta == ("" if parsed.action else parsed.final)
    assert reasoning in (parsed.thought or "", "only a thought")  # a lone thought is also the answer


def test_nothing_of_a_marker_or_a_tool_call_is_shown_while_streaming():
    reasoning, delta, streamed = split(REPLIES[2], 1)
    assert reasoning == "use the tool" and delta == ""
    assert all("Action" not in t and "Thought" not in t for _, t in streamed)
    _, delta, streamed = split(REPLIES[0], 1)
    assert all("Final" not in t and "Answer" not in t for _, t in streamed)
    assert delta == "42"


def test_the_answer_streams_before_the_reply_ends():
    _, _, streamed = split("Thought: x\nFinal Answer: " + "word " * 50, 5)
    shown = "".join(t for kind, t in streamed if kind == "delta")
    assert len(shown) > 200  # all but the trailing space, before finish()
