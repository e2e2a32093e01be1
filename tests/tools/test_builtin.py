from __future__ import annotations

import datetime as dt
import math
import time

import pytest

from app.tools.builtin import calculator, current_time
from app.tools.registry import ToolError

# --------------------------------------------------------------------------- calculator


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2", 3),
        ("2 * (3 + 4) ** 2 / sqrt(16)", 24.5),
        ("7 // 2", 3),
        ("7 % 3", 1),
        ("-2 ** 2", -4),
        ("2 ** 3 ** 2", 512),
        ("10 - 2 - 3", 5),
        ("100 / 10 / 5", 2.0),
        ("+5", 5),
        ("2 ** -1", 0.5),
        ("1.5e3 * 2", 3000.0),
        ("pi", math.pi),
        ("e ** 1", math.e),
        ("tau / 2 - pi", 0.0),
        ("sin(0) + cos(0) + tan(0)", 1.0),
        ("log(8, 2)", 3.0),
        ("log(e)", 1.0),
        ("log10(1000) + log2(8) + exp(0)", 7.0),
        ("abs(-3)", 3),
        ("round(2.567, 2)", 2.57),
        ("round(2.5)", 2),
        ("floor(2.7) + ceil(2.1)", 5),
        ("min(3, 1, 2) + max(3, 1, 2)", 4),
        ("hypot(3, 4)", 5.0),
        ("factorial(5)", 120),
        ("factorial(1000) % 7", 0),
        ("2 ** 9999 - 2 ** 9999", 0),
        ("+".join(["1"] * 499), 499),  # a long chain is not "too deeply nested"
    ],
)
def test_calculator_evaluates(expression: str, expected: float) -> None:
    out = calculator(expression)
    assert out["expression"] == expression
    assert out["result"] == pytest.approx(expected)
    assert type(out["result"]) is type(expected)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ('__import__("os")', "unknown function '__import__'"),
        ('__import__("os").system("id")', "only calls to the listed functions"),
        ("open('/etc/passwd')", "unknown function 'open'"),
        ("x + 1", "unknown name 'x'"),
        ("sqrt", "sqrt is a function"),
        ("(1).real", "unsupported syntax: Attribute"),
        ("math.pi", "unsupported syntax: Attribute"),
        ("[1]", "unsupported syntax: List"),
        ("[1][0]", "unsupported syntax: Subscript"),
        ("(1, 2)[0]", "unsupported syntax: Subscript"),
        ("'a' * 3", "only numbers"),
        ("b'a'", "only numbers"),
        ("1j", "only real numbers"),
        ("True + 1", "only real numbers"),
        ("None", "only numbers"),
        ("[x for x in (1, 2)]", "unsupported syntax: ListComp"),
        ("{x for x in (1,)}", "unsupported syntax: SetComp"),
        ("(x for x in (1,))", "unsupported syntax: GeneratorExp"),
        ("lambda: 1", "unsupported syntax: Lambda"),
        ("(lambda: 1)()", "only calls to the listed functions"),
        ("sqrt.__class__", "unsupported syntax: Attribute"),
        ("round(2.5, ndigits=1)", "only calls to the listed functions"),
        ("max(*[1, 2])", "argument unpacking"),
        ("1 if 1 else 2", "unsupported syntax: IfExp"),
        ("1 < 2", "unsupported syntax: Compare"),
        ("1 and 2", "unsupported syntax: BoolOp"),
        ("(y := 2)", "unsupported syntax: NamedExpr"),
        ("f'{1}'", "unsupported syntax: JoinedStr"),
        ("{1: 2}", "unsupported syntax: Dict"),
        ("3 & 1", "unsupported operator BitAnd"),
        ("1 << 2", "unsupported operator LShift"),
        ("~1", "unsupported syntax: UnaryOp"),
        ("not 1", "unsupported syntax: UnaryOp"),
        ("import os", "not a valid expression"),
        ("1 +", "not a valid expression"),
        ("1\x00", "not a valid expression"),
        ("", "not a valid expression"),
        ("1 / 0", "division by zero"),
        ("5 // 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("log(8, 1)", "division by zero"),
        ("sqrt(-1)", "math domain error"),
        ("log(0)", "math domain error"),
        ("(-8) ** (1 / 3)", "not a real number"),
        ("max()", "wrong number or type of arguments"),
        ("sqrt(1, 2)", "wrong number or type of arguments"),
        ("factorial(5.0)", "non-negative integer"),
        ("factorial(-1)", "non-negative integer"),
        ("factorial(1001)", "argument too large"),
        ("round(5, -10 ** 9)", "round() digits"),
        ("1e999", "not finite"),
        ("1e308 * 10", "not finite"),
        ("exp(1000)", "result too large"),
        ("10 ** 3000 / 3", "result too large"),
        ("(2 ** 9999) * (2 ** 9999)", "result too large"),
        ("-" * 300 + "1", "nested too deeply"),
        ("(" * 300 + "1" + ")" * 300, "not a valid expression"),
        ("1 + " * 300 + "1", "expression too long"),
    ],
)
def test_calculator_refuses(expression: str, message: str) -> None:
    with pytest.raises(ToolError) as info:
        calculator(expression)
    assert message in info.value.message
    assert info.value.type == "tool_error"


@pytest.mark.parametrize(
    "expression",
    ["9**9**9**9", "10**10**10", "2**10000000", "2**10000", "(10**2999)**5", "10**(10**3000)",
     "factorial(1000)**factorial(1000)", "2.0**10**3000", "1.5**1e10", "(-3)**99999999"],
)
def test_calculator_refuses_huge_powers_before_computing_them(expression: str) -> None:
    # No timing assertion: computing any of these would hang the test, which is the failure.
    with pytest.raises(ToolError, match="too large|not finite"):
        calculator(expression)


# --------------------------------------------------------------------------- current_time


def test_current_time_in_utc_and_a_named_zone() -> None:
    before = int(time.time())
    utc = current_time()
    assert utc["timezone"] == "UTC"
    assert before <= utc["unix"] <= int(time.time())
    parsed = dt.datetime.fromisoformat(utc["iso"])
    assert parsed.utcoffset() == dt.timedelta(0)
    assert utc["weekday"] == parsed.strftime("%A")

    tokyo = current_time("Asia/Tokyo")  # no daylight saving: always +09:00
    assert tokyo["iso"].endswith("+09:00")
    assert abs(dt.datetime.fromisoformat(tokyo["iso"]).timestamp() - tokyo["unix"]) <= 1


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "", "../../etc/passwd", "/etc/localtime"])
def test_current_time_refuses_unknown_zones(zone: str) -> None:
    with pytest.raises(ToolError, match="unknown time zone"):
        current_time(zone)
