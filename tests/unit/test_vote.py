"""The field-wise majority vote (app.services.predict.vote)."""

from __future__ import annotations

import json

import pytest

from app.services.predict.vote import canonical, majority


def test_each_field_is_voted_on_its_own() -> None:
    samples = [
        {"label": "a", "score": 1},
        {"label": "b", "score": 2},
        {"label": "b", "score": 1},
        {"label": "a", "score": 1},
        {"label": "b", "score": 3},
    ]
    v = majority(samples, ["label", "score"])
    assert v.outputs == {"label": "b", "score": 1}  # no sample need have both winners
    assert v.agreement == {"label": 0.6, "score": 0.6}
    assert v.first == {"label": 1, "score": 0}
    assert v.unanimous_with_winners(samples) == 2


def test_a_tie_goes_to_the_earliest_sample() -> None:
    samples = [{"x": 3}, {"x": 1}, {"x": 1}, {"x": 3}, {"x": 2}]
    v = majority(samples, ["x"])
    assert v.outputs == {"x": 3} and v.agreement == {"x": 0.4} and v.first == {"x": 0}
    assert majority([{"x": 1}, {"x": 2}], ["x"]).outputs == {"x": 1}
    assert majority([{"x": 2}, {"x": 1}], ["x"]).outputs == {"x": 2}


def test_values_are_the_same_when_their_canonical_json_is() -> None:
    samples = [{"d": {"a": 1, "b": [1, 2]}}, {"d": {"b": [1, 2], "a": 1}}, {"d": {"a": 1, "b": [2, 1]}}]
    v = majority(samples, ["d"])
    assert v.outputs == {"d": {"a": 1, "b": [1, 2]}} and v.agreement["d"] == pytest.approx(2 / 3)
    assert canonical({"b": 1, "a": "é"}) == '{"a":"é","b":1}'
    assert canonical(True) != canonical(1) and canonical(0.5) != canonical(0)
    assert canonical((1, "x")) == canonical([1, "x"])  # a tuple is its JSON array


def test_a_missing_key_counts_as_none_and_a_winner_can_be_none() -> None:
    v = majority([{"x": None}, {}, {"x": 1}], ["x"])
    assert v.outputs == {"x": None} and v.agreement == {"x": pytest.approx(2 / 3)}


def test_no_sample_with_every_winner() -> None:
    samples = [{"a": 1, "b": 1}, {"a": 2, "b": 2}, {"a": 1, "b": 2}, {"a": 3, "b": 3}]
    v = majority(samples, ["a", "b"])
    assert v.outputs == {"a": 1, "b": 2}
    assert v.unanimous_with_winners(samples) == 2
    assert v.unanimous_with_winners(samples[:2]) is None


def test_one_sample_wins_everything_and_none_is_an_error() -> None:
    v = majority([{"a": "x"}], ["a"])
    assert v.outputs == {"a": "x"} and v.agreement == {"a": 1.0}
    with pytest.raises(ValueError):
        majority([], ["a"])


def test_only_the_given_fields_are_voted() -> None:
    v = majority([{"reasoning": "r1", "a": 1}, {"reasoning": "r2", "a": 1}], ["a"])
    assert v.outputs == {"a": 1} and set(v.agreement) == {"a"}


def test_equal_numbers_are_one_value() -> None:
    """``1`` and ``1.0`` are one number (an ``Any`` or ``int | float`` field may give either; the Literal
    check matches them too), and so are ``0.0`` and ``-0.0`` in a ``float`` field: one vote each, not two."""
    v = majority([{"x": 0.0}, {"x": -0.0}, {"x": 0.5}], ["x"])
    assert v.outputs == {"x": 0.0} and v.agreement["x"] == pytest.approx(2 / 3)
    v = majority([{"x": [1, 2.5]}, {"x": 3}, {"x": [1.0, 2.5]}, {"x": {"k": 3}}, {"x": {"k": 3.0}}], ["x"])
    assert v.outputs == {"x": [1, 2.5]} and v.agreement["x"] == pytest.approx(2 / 5)
    assert canonical({"a": [1.0, -0.0]}) == canonical({"a": [1, 0]})
    assert canonical([True, 1]) != canonical([1, 1])
    deep = 900  # as deep as an Any output may come back (the reply's JSON parser allows it)
    assert canonical(json.loads("[" * deep + "1.0" + "]" * deep)) == "[" * deep + "1" + "]" * deep
