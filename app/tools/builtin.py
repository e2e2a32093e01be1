"""Builtin tools: calculator, current_time, web_search (SearxNG).

``calculator`` and ``current_time`` are plain functions (sync: the executor runs them on its
thread pool). ``web_search`` needs the app's HTTP client and the SearxNG URL, so
:func:`register_builtins` binds them; without a URL the tool is listed as unavailable.
"""

from __future__ import annotations

import ast
import math
import operator
import time
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from pydantic import Field

from app.tools.registry import ToolError, ToolRegistry

# --------------------------------------------------------------------------- calculator

MAX_EXPRESSION_CHARS = 1000
MAX_DEPTH = 200  # nesting of operations (a sum of n terms nests n deep); keeps recursion shallow
MAX_ROUND_DIGITS = 1000  # round(5, -10**9) would compute 10**(10**9)
MAX_INT_BITS = 10_000  # ~3,000 decimal digits: 2**9999 is fine, 2**10000 is refused before computing
MAX_FACTORIAL = 1000

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_OP_SYMBOLS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**"}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _factorial(n: Any) -> int:
    if not isinstance(n, int) or n < 0:
        raise ToolError("factorial() needs a non-negative integer")
    if n > MAX_FACTORIAL:
        raise ToolError(f"factorial() argument too large (at most {MAX_FACTORIAL})")
    return math.factorial(n)


def _round(x: Any, ndigits: Any = None) -> int | float:
    if ndigits is not None and (not isinstance(ndigits, int) or abs(ndigits) > MAX_ROUND_DIGITS):
        raise ToolError(f"round() digits must be an integer between -{MAX_ROUND_DIGITS} and {MAX_ROUND_DIGITS}")
    return round(x, ndigits)


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt, "sin": math.sin, "cos": math.cos, "tan": math.tan,
    "log": math.log, "log10": math.log10, "log2": math.log2, "exp": math.exp,
    "abs": abs, "round": _round, "floor": math.floor, "ceil": math.ceil,
    "min": min, "max": max, "hypot": math.hypot, "factorial": _factorial,
}


def calculator(
    expression: Annotated[
        str,
        Field(description="e.g. '2 * (3 + 4) ** 2 / sqrt(16)'", min_length=1, max_length=MAX_EXPRESSION_CHARS),
    ],
) -> dict[str, Any]:
    """Evaluate an arithmetic expression exactly as written and return the number.

    Supports + - * / // % ** and parentheses, the constants pi, e and tau, and the functions
    sqrt, sin, cos, tan (radians), log(x[, base]), log10, log2, exp, abs, round(x[, digits]),
    floor, ceil, min, max, hypot and factorial. Use it for any arithmetic instead of computing
    in your head.
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression too long (at most {MAX_EXPRESSION_CHARS} characters)")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"not a valid expression: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError):  # null bytes; absurd nesting
        raise ToolError("not a valid expression") from None
    return {"expression": expression, "result": _eval(tree.body, 0)}


def _eval(node: ast.expr, depth: int) -> int | float:
    if depth > MAX_DEPTH:
        raise ToolError(f"expression nested too deeply (at most {MAX_DEPTH} levels)")
    match node:
        case ast.Constant(value=bool()) | ast.Constant(value=complex()):
            raise ToolError(f"unsupported value {node.value!r}: only real numbers")
        case ast.Constant(value=int() | float() as value):
            return _checked(value)
        case ast.Constant():
            raise ToolError("only numbers are allowed (no strings or other literals)")
        case ast.Name(id=name) if name in _CONSTANTS:
            return _CONSTANTS[name]
        case ast.Name(id=name) if name in _FUNCTIONS:
            raise ToolError(f"{name} is a function: call it, e.g. {name}(x)")
        case ast.Name(id=name):
            raise ToolError(f"unknown name {name!r}; constants: {', '.join(_CONSTANTS)}")
        case ast.UnaryOp(op=op, operand=operand) if type(op) in _UNARY:
            return _checked(_UNARY[type(op)](_eval(operand, depth + 1)))
        case ast.BinOp():
            return _eval_binop(node, depth)
        case ast.Call(func=ast.Name(id=name), args=args, keywords=[]) if name in _FUNCTIONS:
            if any(isinstance(a, ast.Starred) for a in args):
                raise ToolError("argument unpacking (*) is not allowed")
            values = [_eval(a, depth + 1) for a in args]
            return _apply(_FUNCTIONS[name], *values, what=f"{name}()")
        case ast.Call(func=ast.Name(id=name), keywords=[]):
            raise ToolError(f"unknown function {name!r}; functions: {', '.join(_FUNCTIONS)}")
        case ast.Call():
            raise ToolError("only calls to the listed functions, with positional arguments, are allowed")
        case _:
            raise ToolError(f"unsupported syntax: {type(node).__name__} (only arithmetic is allowed)")


def _eval_binop(node: ast.BinOp, depth: int) -> int | float:
    # A chain like 1 + 2 + ... + n nests n deep on the left: walk that spine in a loop so a long
    # sum does not count against MAX_DEPTH (or the recursion limit).
    spine: list[ast.BinOp] = []
    left: ast.expr = node
    while isinstance(left, ast.BinOp):
        spine.append(left)
        left = left.left
    value = _eval(left, depth + 1)
    for op_node in reversed(spine):
        op = type(op_node.op)
        if op not in _BINARY:
            raise ToolError(f"unsupported operator {op.__name__} (only + - * / // % **)")
        right = _eval(op_node.right, depth + 1)
        if op is ast.Pow:
            _check_power(value, right)
        value = _apply(_BINARY[op], value, right, what=f"'{_OP_SYMBOLS[op]}'")
    return value


def _apply(func: Callable[..., Any], *args: Any, what: str) -> int | float:
    try:
        value = func(*args)
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except OverflowError:
        raise ToolError(f"{what}: result too large") from None
    except ValueError as exc:  # math domain errors: sqrt(-1), log(0)
        raise ToolError(f"{what}: {exc}") from None
    except TypeError:
        raise ToolError(f"{what}: wrong number or type of arguments") from None
    return _checked(value)


def _check_power(base: int | float, exponent: int | float) -> None:
    """Refuse a power whose result would be an enormous integer, before computing it."""
    if not (isinstance(base, int) and isinstance(exponent, int)) or exponent <= 0 or abs(base) <= 1:
        return  # floats overflow quickly by themselves; negative exponents give floats
    if exponent >= MAX_INT_BITS or exponent * math.log2(abs(base)) >= MAX_INT_BITS:
        raise ToolError(f"result too large: the power would exceed {MAX_INT_BITS} bits")


def _checked(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ToolError("the result is not a real number")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ToolError(f"result too large (more than {MAX_INT_BITS} bits)")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("result is not finite (overflow)")
    return value


# --------------------------------------------------------------------------- current_time


def current_time(
    timezone: Annotated[str, Field(description="IANA time zone, e.g. 'Europe/Paris' or 'UTC'")] = "UTC",
) -> dict[str, Any]:
    """Get the current date and time in a time zone (ISO 8601, weekday and Unix timestamp)."""
    try:
        tz = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ToolError(
            f"unknown time zone {timezone!r}: use an IANA name such as 'UTC', 'Europe/Paris' or 'America/New_York'"
        ) from None
    now = datetime.now(tz)
    return {
        "timezone": timezone,
        "iso": now.isoformat(timespec="seconds"),
        "weekday": now.strftime("%A"),
        "unix": int(time.time()),
    }


# --------------------------------------------------------------------------- web_search

MAX_SNIPPET_CHARS = 500


async def searx_search(client: httpx.AsyncClient, base_url: str, query: str, max_results: int) -> dict[str, Any]:
    """Query a SearxNG instance's JSON API: ``GET {base_url}/search?q=...&format=json``."""
    try:
        response = await client.get(
            base_url.rstrip("/") + "/search",
            params={"q": query, "format": "json"},
            headers={"accept": "application/json"},
        )
    except httpx.TimeoutException:
        raise ToolError("the search backend did not answer in time", type="tool_timeout") from None
    except httpx.HTTPError as exc:
        raise ToolError(
            f"could not reach the search backend ({type(exc).__name__})", type="tool_upstream_error"
        ) from None
    if response.status_code == 403:  # SearxNG answers 403 when "json" is not in search.formats
        raise ToolError(
            "the search backend refused the JSON format (enable 'json' under search.formats in SearxNG's settings.yml)",
            type="tool_upstream_error", upstream_status=403,
        )
    if not response.is_success:
        raise ToolError(
            f"the search backend answered HTTP {response.status_code}",
            type="tool_upstream_error", upstream_status=response.status_code,
        )
    try:
        data = response.json()
        items = data.get("results", [])
        assert isinstance(items, list)
    except (ValueError, AttributeError, AssertionError):
        raise ToolError(
            "the search backend answered something other than SearxNG JSON", type="tool_upstream_error"
        ) from None
    results = []
    for item in items:
        if not isinstance(item, dict) or not item.get("url"):
            continue
        snippet = str(item.get("content") or "").strip()
        if len(snippet) > MAX_SNIPPET_CHARS:
            snippet = snippet[:MAX_SNIPPET_CHARS].rstrip() + "…"
        results.append({"title": str(item.get("title") or ""), "url": str(item["url"]), "snippet": snippet})
        if len(results) >= max_results:
            break
    return {"query": query, "results": results}


# --------------------------------------------------------------------------- registration


def register_builtins(registry: ToolRegistry, *, web_search_url: str | None, http_client: httpx.AsyncClient) -> None:
    """Register the built-in tools: calculator, current_time and web_search (available with a SearxNG URL)."""
    registry.register(calculator, timeout_s=2.0)
    registry.register(current_time)

    async def web_search(
        query: Annotated[str, Field(description="what to search for", min_length=1, max_length=500)],
        max_results: Annotated[int, Field(description="how many results to return", ge=1, le=20)] = 5,
    ) -> dict[str, Any]:
        """Search the web. Returns titles, URLs and snippets of the top results; use it for recent
        events or facts you are not sure of, and cite the URLs."""
        assert web_search_url is not None  # the executor never runs an unavailable tool
        return await searx_search(http_client, web_search_url, query, max_results)

    registry.register(
        web_search,
        available=web_search_url is not None,
        unavailable_reason=None if web_search_url else "no search backend configured (set VGATE_WEB_SEARCH_URL)",
    )
