"""The ReAct splitter: what a client sees of a reply while it streams, whatever the chunking."""

from __future__ import annotations

import random

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
    # small models: text before the markers, markers in lower case or mid-line, no markers at all
    "Let me think about it. Final Answer: 42",
    "I will use the tool.\nAction: calculator\nAction Input: {\"expression\": \"6*7\"}",
    "42",
    "Thought: easy\nfinal answer: 42",
    "Let me see.\nfinal answer:  42 ",
    "Thought: x Final Answer: 42",
    "thought: add\naction: calculator\naction input: {\"expression\": \"1+1\"}",
    "A transaction: done. The final word: yes",
    "Thought: hmm\nAction: calculator\nFinal Answer: 7",
    "I may take action: later",
    "Sure.\nFinal\n  Answer :\n\n42\n",
    # long whitespace inside a marker: past the cap it is no marker, for parse and splitter alike
    "Thought: use it\nAction" + " " * 40 + ": calc\nAction Input: {}\nFinal Answer: 43",
    "Thought: use it\nAction" + " " * 8 + ": calc\nAction Input: {}\nFinal Answer: 43",
    "Thought: x\nFinal" + " " * 40 + "Answer: 42",
    "Let me see. Final" + "\n" * 8 + "Answer" + " \t" * 4 + ":  42",
    "Thought: x" + " " * 100 + "\n" * 50 + "Final Answer:" + " " * 100 + "42" + " " * 100,
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
    """The invariant: the deltas join to the answer (streamed ones are a prefix of it), and a tool
    call's turn streams no delta at all."""
    parsed = react.parse(reply)
    reasoning, delta, streamed = split(reply, size)
    assert delta == ("" if parsed.action else parsed.final)
    assert (parsed.final or "").startswith("".join(t for kind, t in streamed if kind == "delta"))
    # a reply that starts with "Thought:" but has no marker streamed as a thought: it is also the answer
    assert reasoning in (parsed.thought or "", reply.split(":", 1)[-1].strip() if parsed.thought is None else None)


@pytest.mark.parametrize("reply,thought,action,final", [
    ("Let me think about it. Final Answer: 42", "Let me think about it.", None, "42"),
    ("I will use the tool.\nAction: calculator\nAction Input: {}", "I will use the tool.", "calculator", None),
    ("Thought: easy\nfinal answer: 42", "easy", None, "42"),
    ("Thought: x Final Answer: 42", "x", None, "42"),
    ("thought: add\naction: calculator\naction input: {}", "add", "calculator", None),
    ("A transaction: done. The final word: yes", None, None, "A transaction: done. The final word: yes"),
])
def test_small_model_shapes(reply, thought, action, final):
    parsed = react.parse(reply)
    assert (parsed.thought, parsed.action, parsed.final) == (thought, action, final)


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


@pytest.mark.parametrize("seed", range(20))
def test_the_invariant_holds_whatever_the_chunk_boundaries(seed):
    rng = random.Random(seed)
    for reply in REPLIES:
        s, out, i = react.StreamSplitter(), [], 0
        while i < len(reply):
            n = rng.randint(1, 6)
            out += s.feed(reply[i:i + n])
            i += n
        out += s.finish(parsed := react.parse(reply))
        assert "".join(t for kind, t in out if kind == "delta") == ("" if parsed.action else parsed.final), reply


def test_text_before_a_marker_is_never_shown_as_the_answer():
    """A reply that does not start with "Thought:" is held back until a marker shows what it was:
    here the thought (reasoning); the answer after "Final Answer:" streams as usual."""
    _, _, streamed = split("Let me think about it. final answer: " + "word " * 50, 5)
    assert streamed[0] == ("reasoning", "Let me think about it.")
    shown = "".join(t for kind, t in streamed if kind == "delta")
    assert shown.startswith("word") and len(shown) > 200
    _, delta, streamed = split("I will use the tool.\nAction: calculator\nAction Input: {}", 3)
    assert delta == "" and not [t for kind, t in streamed if kind == "delta"]


def test_a_reply_in_neither_form_is_shown_once_it_is_whole():
    """Until the reply ends a marker may still come, so none of it is shown as the answer before."""
    reply = "The sky is blue because of Rayleigh scattering. " * 5
    _, delta, streamed = split(reply, 4)
    assert streamed == [] and delta == reply.strip()


@pytest.mark.parametrize("args", ["[" * 1200, "{" * 1200, '{"a": ' + "[" * 5000 + "]" * 5000 + "}"])
def test_action_input_nested_too_deeply_is_invalid_arguments(args):
    """JSON nested past the recursion limit raises RecursionError, not ValueError: it is invalid
    arguments (the tool result says so, the model can retry), not a crashed run."""
    parsed = react.parse("Thought: ok\nAction: calculator\nAction Input: " + args)
    assert (parsed.action, parsed.arguments, parsed.invalid_arguments) == ("calculator", None, args)
    forced = '{"action": "calculator", "action_input": ' + args + "}"
    parsed = react.parse_action_json(forced)  # a forced turn's JSON: read as text like any invalid JSON
    assert parsed.arguments is None and parsed.final == forced


_PIECES = ["Thought:", "Thought :", "Final Answer:", "final answer :", "FINAL  ANSWER:", "Action:", "Action: calc",
           '\nAction Input: {"a": 1}', "Action Input:", "calc", "\n", " ", "  ", "{}", "x", "Fin", "al", "An",
           "swer", ":", "Act", "ion", "trans", "The answer is 42.", "é", "\t", "Observation: z", "Final", "Answer",
           "_", " " * 40, "\n" * 20, "\xa0", "\u2028", "Final" + " " * 40 + "Answer:", "Final" + " " * 8 + "Answer:",
           "Action" + " " * 40 + ": calc\nAction Input: {}", "Action" + " " * 8 + ": calc\nAction Input: {}"]


@pytest.mark.parametrize("seed", range(10))
def test_the_invariant_holds_for_random_replies_with_long_whitespace_runs(seed):
    """Random replies of markers, near-markers and whitespace runs, fed in random pieces: what
    streams is a prefix of parse's answer, all of it is the answer, and a tool call streams none."""
    rng = random.Random(seed)
    for _ in range(300):
        reply = "".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 12)))
        s, out, i = react.StreamSplitter(), [], 0
        while i < len(reply):
            n = rng.randint(1, 8)
            out += s.feed(reply[i:i + n])
            i += n
        parsed = react.parse(reply)
        want = "" if parsed.action else parsed.final
        streamed = "".join(t for kind, t in out if kind == "delta")
        assert want.startswith(streamed), reply
        out += s.finish(parsed)
        assert "".join(t for kind, t in out if kind == "delta") == want, reply


def test_feeding_a_long_reply_searches_a_bounded_window():
    """A reply with no marker is held back whole: feeding it must not copy or search again what is
    held on every piece (quadratic in the reply's length, 2 s for 120k pieces). What is searched
    stays within one marker's length, however long the reply grows."""
    s = react.StreamSplitter()
    longest = 0
    for i in range(20_000):
        s.feed("word " if i % 7 else "thinking,")
        longest = max(longest, len(s.text))
    assert longest <= react._MARGIN + len("thinking,")
