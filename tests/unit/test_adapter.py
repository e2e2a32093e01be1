"""Prompt layout: system message, demos, final inputs, and a byte-stable shared prefix."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from app.errors import InvalidRequestError
from app.services.adapter import (
    MAX_REPAIR_ERROR_CHARS,
    MAX_REPAIR_ERRORS,
    NO_INPUTS_TEXT,
    build_messages,
    default_instructions,
    demo_messages,
    render_inputs,
    repair_messages,
    repair_prompt,
    response_format,
    schema_name,
    system_prompt,
)
from app.services.signature import parse_signature

SIG = parse_signature(
    {
        "inputs": {"context": {"type": "list[str]", "desc": "Relevant passages."}, "question": "str"},
        "outputs": {"answer": {"type": "str", "desc": "Often 1-5 words."}, "confidence": "float"},
    }
)
DEMOS = [
    {"context": ["Rome is in Italy."], "question": "Capital of Italy?", "answer": "Rome", "confidence": 0.9},
    {"question": "2+2?", "context": [], "answer": "4", "confidence": 1.0, "augmented": True},
]


def test_layout_system_then_demo_pairs_then_inputs() -> None:
    msgs = build_messages(SIG, {"context": ["Paris is in France."], "question": "Capital of France?"}, DEMOS)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert all(set(m) == {"role", "content"} and isinstance(m["content"], str) for m in msgs)
    assert msgs[-1]["content"] == (
        "[[ ## context ## ]]\n"
        '["Paris is in France."]\n\n'
        "[[ ## question ## ]]\n"
        "Capital of France?"
    )
    assert msgs[1]["content"] == '[[ ## context ## ]]\n["Rome is in Italy."]\n\n[[ ## question ## ]]\nCapital of Italy?'
    assert msgs[2]["content"] == '{"answer": "Rome", "confidence": 0.9}'
    # demo keys come out in signature order, whatever order the demo dict had
    assert msgs[3]["content"] == "[[ ## context ## ]]\n[]\n\n[[ ## question ## ]]\n2+2?"
    assert json.loads(msgs[4]["content"]) == {"answer": "4", "confidence": 1.0}


def test_system_prompt_contents() -> None:
    text = build_messages(SIG, {"context": [], "question": "q"})[0]["content"]
    assert text.startswith("Given the fields `context`, `question`, produce the fields `answer`, `confidence`.")
    assert "1. `context` (list[str]): Relevant passages.\n2. `question` (str)" in text
    assert "1. `answer` (str): Often 1-5 words.\n2. `confidence` (float)" in text
    assert text.index("input fields") < text.index("output fields")
    assert 'Respond with a JSON object with exactly these keys, in this order: "answer", "confidence".' in text
    assert text == system_prompt(SIG)


def test_instructions_replace_the_default() -> None:
    sig = SIG.with_instructions("Answer using only the context.")
    text = system_prompt(sig)
    assert text.startswith("Answer using only the context.\n\n")
    assert "Given the fields" not in text


def test_default_instructions_like_dspy() -> None:
    assert default_instructions(parse_signature("a, b -> c")) == "Given the fields `a`, `b`, produce the fields `c`."
    assert default_instructions(parse_signature("-> joke")) == "Produce the fields `joke`."


def test_types_are_described_canonically() -> None:
    sig = parse_signature("q -> label: Literal['pos', 'neg'], n: Optional[int]")
    text = system_prompt(sig)
    assert '`label` (Literal["pos", "neg"])' in text
    assert "`n` (Optional[int])" in text


def test_shared_prefix_is_byte_identical_across_inputs() -> None:
    a = build_messages(SIG, {"context": ["x"], "question": "first?"}, DEMOS)
    b = build_messages(SIG, {"context": ["y", "z"], "question": "second?"}, [dict(d) for d in DEMOS])
    assert a[:-1] == b[:-1]
    assert json.dumps(a[:-1], ensure_ascii=False) == json.dumps(b[:-1], ensure_ascii=False)
    assert a[-1] != b[-1]
    # an equal signature parsed again renders the same prefix too
    again = parse_signature(SIG.to_dict())
    c = build_messages(again, {"question": "third?", "context": []}, DEMOS)
    assert c[:-1] == a[:-1]


def test_input_order_follows_signature_not_request() -> None:
    a = build_messages(SIG, {"context": ["c"], "question": "q"})[-1]["content"]
    b = build_messages(SIG, {"question": "q", "context": ["c"]})[-1]["content"]
    assert a == b
    assert a.index("context") < a.index("question")


def test_value_rendering_str_verbatim_others_json() -> None:
    sig = parse_signature(
        "text, n: int, x: float, flag: bool, items: list[str], meta: dict[str, int], opt: Optional[str] -> out"
    )
    content = build_messages(
        sig,
        {"text": "naïve \"quoted\"\nline", "n": 3, "x": 0.5, "flag": True, "items": ["é", "b"],
         "meta": {"b": 1, "a": 2}, "opt": None},
    )[-1]["content"]
    blocks = dict(re.findall(r"\[\[ ## (\w+) ## \]\]\n(.*?)(?=\n\n\[\[ ## |\Z)", content, re.S))
    assert blocks == {
        "text": 'naïve "quoted"\nline',
        "n": "3",
        "x": "0.5",
        "flag": "true",
        "items": '["é", "b"]',
        "meta": '{"b": 1, "a": 2}',
        "opt": "null",
    }


def test_inputs_are_validated_and_coerced() -> None:
    sig = parse_signature("k: int, q -> a")
    assert build_messages(sig, {"k": "7", "q": "x"})[-1]["content"] == "[[ ## k ## ]]\n7\n\n[[ ## q ## ]]\nx"
    with pytest.raises(InvalidRequestError, match="missing input field"):
        build_messages(sig, {"q": "x"})
    with pytest.raises(InvalidRequestError, match="invalid inputs"):
        build_messages(sig, {"k": "seven", "q": "x"})


def test_no_input_signature() -> None:
    msgs = build_messages(parse_signature("-> joke"), {})
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert msgs[-1]["content"] == NO_INPUTS_TEXT
    assert "input fields" not in msgs[0]["content"]


# --- demos ---------------------------------------------------------------------------------


def test_partial_demos_render_what_they_have() -> None:
    cot = SIG.with_reasoning()
    msgs = demo_messages(cot, [{"question": "q?", "answer": "a"}])  # no context, no reasoning, no confidence
    assert msgs == [
        {"role": "user", "content": "[[ ## question ## ]]\nq?"},
        {"role": "assistant", "content": '{"answer": "a"}'},
    ]
    full = demo_messages(cot, [{"question": "q?", "context": [], "reasoning": "r", "answer": "a", "confidence": 0.1}])
    assert list(json.loads(full[1]["content"])) == ["reasoning", "answer", "confidence"]


def test_demo_without_outputs_is_skipped() -> None:
    assert demo_messages(SIG, [{"question": "q?", "context": []}]) == []
    msgs = build_messages(SIG, {"context": [], "question": "q"}, [{"question": "only input"}, DEMOS[0]])
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]


def test_demo_unknown_keys_are_refused() -> None:
    with pytest.raises(InvalidRequestError) as info:
        build_messages(SIG, {"context": [], "question": "q"}, [DEMOS[0], {"question": "q", "answr": "a"}])
    e = info.value
    assert e.status_code == 422
    assert "demo 1 has unknown field(s) 'answr'" in e.message
    assert e.details == {"demo": 1, "unknown": ["answr"]}


@pytest.mark.parametrize(
    ("demos", "piece"),
    [
        (["not a dict"], "demo 0 must be an object"),
        ("nope", "demos must be a list"),
        ({"question": "q"}, "demos must be a list"),
        ([{"question": "q", "answer": {1, 2}}], "demo 0 has a value that is not JSON"),
    ],
)
def test_malformed_demos(demos: Any, piece: str) -> None:
    with pytest.raises(InvalidRequestError, match=re.escape(piece)):
        build_messages(SIG, {"context": [], "question": "q"}, demos)


def test_demo_values_are_not_type_checked() -> None:
    msgs = demo_messages(SIG, [{"question": 42, "answer": ["not", "a", "str"]}])
    assert msgs[0]["content"] == "[[ ## question ## ]]\n42"
    assert msgs[1]["content"] == '{"answer": ["not", "a", "str"]}'


def test_empty_or_none_demos() -> None:
    assert build_messages(SIG, {"context": [], "question": "q"}, None) == build_messages(
        SIG, {"context": [], "question": "q"}, []
    )


def test_render_inputs_leaves_absent_fields_out() -> None:
    assert render_inputs(SIG, {"question": "q"}) == "[[ ## question ## ]]\nq"
    assert render_inputs(SIG, {}) == NO_INPUTS_TEXT


# --- response_format -------------------------------------------------------------------------


def test_response_format() -> None:
    fmt = response_format(SIG)
    assert fmt == {
        "type": "json_schema",
        "json_schema": {"name": "answer_confidence", "schema": SIG.output_json_schema(), "strict": True},
    }
    json.dumps(fmt)
    assert response_format(SIG.with_reasoning())["json_schema"]["schema"]["required"] == [
        "reasoning", "answer", "confidence"
    ]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (None, "answer_confidence"),
        ("my program!", "my_program"),
        ("qa-v2", "qa-v2"),
        ("x" * 100, "x" * 64),
        ("///", "output"),
    ],
)
def test_schema_name_is_safe(name: str | None, expected: str) -> None:
    got = schema_name(SIG, name)
    assert got == expected
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", got)


def test_schema_name_from_many_outputs_is_bounded() -> None:
    sig = parse_signature("q -> " + ", ".join(f"output_field_{i}" for i in range(20)))
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", schema_name(sig))


# --- repair prompts ----------------------------------------------------------------------------


def test_repair_prompt_shows_each_error_and_the_format() -> None:
    errors = [{"loc": ["answer"], "msg": "Input should be a valid string", "type": "string_type"},
              {"loc": ["items", 0, "name"], "msg": "Field required", "type": "missing"}]
    text = repair_prompt(SIG, errors)
    assert "- `answer`: Input should be a valid string" in text
    assert "- `items.0.name`: Field required" in text
    assert '"answer", "confidence"' in text and "only the corrected JSON object" in text


def test_repair_prompt_names_a_json_error_and_a_cut_off_reply() -> None:
    text = repair_prompt(SIG, [{"loc": [], "msg": "Expecting value: line 1 column 1 (char 0)",
                                "type": "json_invalid"}])
    assert "- the reply as a whole: not valid JSON (Expecting value" in text
    cut = repair_prompt(SIG, [], cut_at_tokens=64)
    assert "cut off at the limit of 64 tokens" in cut and "does not match" not in cut


def test_repair_prompt_is_bounded() -> None:
    errors = [{"loc": [f"f{i}"], "msg": "x" * 5000, "type": "t"} for i in range(50)]
    text = repair_prompt(SIG, errors)
    assert text.count("\n- `f") == MAX_REPAIR_ERRORS and "- and 40 more" in text
    assert len(text) < MAX_REPAIR_ERRORS * (MAX_REPAIR_ERROR_CHARS + 20) + 500


def test_repair_messages_extend_the_conversation() -> None:
    messages = build_messages(SIG, {"context": ["a"], "question": "q"})
    out = repair_messages(messages, SIG, '{"answer": 1}', [{"loc": ["answer"], "msg": "bad", "type": "t"}])
    assert out[:-2] == messages and len(messages) == 2  # the prefix is unchanged (prefix cache)
    assert out[-2] == {"role": "assistant", "content": '{"answer": 1}'}
    assert out[-1]["role"] == "user" and "`answer`: bad" in out[-1]["content"]


def test_the_system_prompt_describes_object_types_and_constraints():
    """A field line shows only a type's name (``list[Contact]``): the prompt also says what a Contact
    is, and a field's constraints, so a model without structured outputs can follow them (and a
    repair's errors make sense to it)."""
    from app.services.adapter import system_prompt
    from app.services.signature import parse_signature

    sig = parse_signature({
        "types": {"Contact": {"name": "str", "email": {"type": "Optional[str]", "desc": "work address"}}},
        "inputs": {"text": "str"},
        "outputs": {"contacts": {"type": "list[Contact]", "max_items": 5}, "stars": {"type": "int", "ge": 1, "le": 5}},
    })
    prompt = system_prompt(sig)
    assert "`contacts` (list[Contact]; at most 5 items)" in prompt
    assert "`stars` (int; at least 1, at most 5)" in prompt
    assert "`Contact`:" in prompt and "`email` (Optional[str]): work address" in prompt
