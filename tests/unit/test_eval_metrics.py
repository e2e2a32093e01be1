"""Evaluation metrics on known values, and the metric spec of a request."""

from __future__ import annotations

import pytest

from app.errors import InvalidRequestError
from app.services.evaluation.metrics import (
    contains,
    exact_match,
    json_equal,
    normalize_text,
    normalized_match,
    numeric,
    one_of,
    parse_number,
    token_f1,
)
from app.services.evaluation.spec import compile_metric


@pytest.mark.parametrize(("p", "e", "want"), [
    (1, 1.0, 1.0),  # canonical JSON: 1 and 1.0 are the same number
    (True, 1, 0.0),  # a boolean is never a number
    (False, 0, 0.0),
    ("5", 5, 0.0),  # a string is not its number
    ("Paris", "Paris", 1.0),
    ("Paris", "paris", 0.0),
    ({"a": 1, "b": [1, 2.0]}, {"b": [1, 2], "a": 1.0}, 1.0),  # key order and integral floats
    ([1, 2], [2, 1], 0.0),
    (None, None, 1.0),
    (0.1, 0.10000001, 0.0),
])
def test_exact_match(p, e, want):
    assert exact_match(p, e) == want


def test_normalize_text_is_squads():
    assert normalize_text("  The  Eiffel-Tower, in PARIS!  ") == "eiffeltower in paris"
    assert normalize_text("An apple a day") == "apple day"
    assert normalize_text("theatre") == "theatre"  # articles as words only
    assert normalize_text(5) == "5" and normalize_text([1, 2]) == "1 2"


@pytest.mark.parametrize(("p", "e", "want"), [
    ("The Paris.", "paris", 1.0),
    ("PARIS", "  paris ", 1.0),
    ("Paris, France", "paris", 0.0),
    (5, "5", 1.0),  # compared as text
    ("a cat", "the cat", 1.0),
])
def test_normalized_match(p, e, want):
    assert normalized_match(p, e) == want


@pytest.mark.parametrize(("p", "e", "want"), [
    ("It is Paris, France.", "paris", 1.0),
    ("Parisian food", "paris", 0.0),  # on word boundaries
    ("The capital is New York City", "new york", 1.0),
    ("nothing", "paris", 0.0),
    ("anything", "", 1.0),  # the empty text is in every text
])
def test_contains(p, e, want):
    assert contains(p, e) == want


def test_numeric():
    assert numeric(5, 5.0) == 1.0
    assert numeric("5", 5) == 1.0 and numeric(" 5.0 ", "5") == 1.0 and numeric("1,000", 1000) == 1.0
    assert numeric(5.01, 5) == 0.0  # default tolerance 0
    assert numeric(5.01, 5, tolerance=0.01) == 1.0
    assert numeric(5.02, 5, tolerance=0.01) == 0.0
    assert numeric(104, 100, relative=0.05) == 1.0 and numeric(106, 100, relative=0.05) == 0.0
    assert numeric(True, 1) == 0.0 and numeric("five", 5) == 0.0 and numeric(None, 0) == 0.0
    assert numeric(float("nan"), 0, tolerance=1e9) == 0.0 and numeric("inf", "inf") == 0.0
    assert parse_number(" -2.5 ") == -2.5 and parse_number("1e3") == 1000.0 and parse_number([1]) is None


def test_numeric_with_an_integer_too_large_for_a_float_scores_0_not_raises():
    """A JSON integer of hundreds of digits is a Python int that float() refuses (OverflowError):
    it is no finite number, so it scores 0 (it was a 500 for the whole evaluation)."""
    huge = 10**400
    assert parse_number(huge) is None
    assert numeric(huge, 1) == 0.0 and numeric(1, huge) == 0.0
    assert numeric(huge, huge) == 0.0


def test_json_equal_with_json_text_nested_too_deep_compares_it_as_text():
    """A string that would parse into JSON deeper than Python's recursion limit (RecursionError, not
    a ValueError) is compared as the string it is (it was a 500)."""
    deep = "[" * 5000 + "]" * 5000
    assert json_equal(deep, 1) == 0.0
    assert json_equal(deep, deep) == 1.0
    assert json_equal("[" * 100000, "x") == 0.0


def test_token_f1_known_values():
    assert token_f1("the cat sat", "cat sat") == 1.0  # articles dropped
    # pred {cat, sat, down} vs gold {cat, sat, on, mat}: 2 common, p=2/3, r=2/4 -> f1=4/7
    assert token_f1("cat sat down", "cat sat on mat") == pytest.approx(4 / 7)
    assert token_f1("dog", "cat") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("", "cat") == 0.0
    assert token_f1("cat cat", "cat") == pytest.approx(2 * 0.5 * 1 / 1.5)  # counts: 1 common of 2 predicted


def test_json_equal():
    assert json_equal({"a": [1, {"b": 2}]}, {"a": [1.0, {"b": 2}]}) == 1.0
    assert json_equal('{"b": 2, "a": 1}', {"a": 1, "b": 2}) == 1.0  # a string holding JSON is parsed
    assert json_equal({"a": 1}, {"a": 1, "b": None}) == 0.0
    assert json_equal([1, 2], [2, 1]) == 0.0
    assert json_equal("not json", "not json") == 1.0
    assert json_equal(True, 1) == 0.0


def test_one_of():
    assert one_of("The Paris", ["London", "paris"]) == 1.0
    assert one_of("Rome", ["London", "paris"]) == 0.0
    assert one_of("x", "x") == 0.0  # expected must be a list


# --- the metric spec ---------------------------------------------------------------------------

OUTPUTS = ("answer", "confidence")


def test_a_name_scores_every_given_field():
    m = compile_metric("normalized_match", OUTPUTS)
    fields = m.for_example({"answer": "x"})
    assert list(fields) == ["answer"] and fields["answer"].name == "normalized_match"
    assert m.describe() == "normalized_match"


def test_default_is_exact_match_and_options_apply():
    assert compile_metric(None, OUTPUTS).describe() == "exact_match"
    m = compile_metric({"name": "numeric", "tolerance": 0.5}, OUTPUTS)
    assert m.for_example({"confidence": 1})["confidence"].score(1.4, 1) == 1.0
    assert m.describe() == {"name": "numeric", "tolerance": 0.5}


def test_per_field_scores_only_named_fields():
    m = compile_metric({"answer": "contains", "confidence": {"name": "numeric", "tolerance": 0.1}}, OUTPUTS)
    fields = m.for_example({"answer": "x", "confidence": 0.5})
    assert {k: v.name for k, v in fields.items()} == {"answer": "contains", "confidence": "numeric"}
    assert list(compile_metric({"answer": "contains"}, OUTPUTS).for_example({"answer": 1, "confidence": 2})) == [
        "answer"]


@pytest.mark.parametrize(("spec", "needle"), [
    ("bogus", "unknown metric 'bogus'; valid: contains, exact_match, json_equal, normalized_match, numeric, one_of"),
    ({"name": "numeric", "tol": 1}, "has no option 'tol'; its options: relative, tolerance"),
    ({"name": "exact_match", "tolerance": 1}, "has no option 'tolerance'; its options: none"),
    ({"name": "numeric", "tolerance": -1}, "must be a number >= 0"),
    ({"answer": "bogus"}, "metric.answer: unknown metric"),
    ({"missing": "exact_match"}, "does not output: 'missing'; its outputs: answer, confidence"),
    ([], "metric must be"),
    ({"answer": 3}, "a metric is a name"),
])
def test_bad_specs_are_422s_naming_what_is_valid(spec, needle):
    with pytest.raises(InvalidRequestError) as info:
        compile_metric(spec, OUTPUTS)
    assert info.value.status_code == 422 and info.value.type == "invalid_metric"
    assert needle in info.value.message
