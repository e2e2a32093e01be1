"""Tokens of the signature string form, read lazily, and errors that say where the reader stands.

Nothing is evaluated: names are matched by a regular expression, numbers converted with ``int``
and ``float``, and quoted strings decoded as JSON string literals.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from app.errors import SignatureError


@dataclass(frozen=True, slots=True)
class Token:
    """One token of a signature string: its kind, value and offset."""
    kind: str  # NAME STRING NUMBER -> ... [ ] , : | EOF
    value: Any
    pos: int  # 0-based offset into the parsed text
    text: str


_TOKEN_RE = re.compile(
    r"""
    (?P<WS>\s+)
  | (?P<ARROW>->)
  | (?P<DOTS>\.\.\.)
  | (?P<NUMBER>-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<NAME>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<DQ>"(?:[^"\\\n]|\\.)*")
  | (?P<SQ>'(?:[^'\\\n]|\\.)*')
  | (?P<PUNCT>[\[\],:|])
    """,
    re.VERBOSE,
)
_INT_RE = re.compile(r"-?\d+")
_SQ_ESCAPES = {
    "'": "'", '"': '"', "\\": "\\", "/": "/", "n": "\n", "t": "\t", "r": "\r", "0": "\0", "b": "\b", "f": "\f",
}


class Lexer:
    """Reads tokens on demand (``peek``/``next``/``expect``), so an error is reported where the
    reader stands; ``error`` builds that error with the field and the 1-based column."""

    def __init__(self, text: str, *, type_of: str | None = None) -> None:
        self.text = text
        self.type_of = type_of  # set when reading one type string of the JSON form
        self.field: str | None = type_of or None
        self.offset = 0
        self.lookahead: Token | None = None

    # -- errors --------------------------------------------------------------

    def error(
        self, message: str, pos: int, *, tail: str = "", field: str | None = None, mention_field: bool = True
    ) -> SignatureError:
        """``<message>[ for field 'x'] at column N[ of type '...']<tail>``; details: field, position (1-based)."""
        field = self.field if field is None else field
        subject = f" for field {field!r}" if field and mention_field else ""
        where = f"at column {pos + 1}"
        if self.type_of is not None:
            where += f" of type {self.text!r}"
        details: dict[str, Any] = {"position": pos + 1}
        if field:
            details["field"] = field
        return SignatureError(f"{message}{subject} {where}{tail}", **details)

    @staticmethod
    def describe(tok: Token) -> str:
        """A token as error messages show it."""
        return "end of input" if tok.kind == "EOF" else repr(tok.text)

    # -- reading -------------------------------------------------------------

    def peek(self) -> Token:
        """The next token, not consumed."""
        if self.lookahead is None:
            self.lookahead = self._lex()
        return self.lookahead

    def next(self) -> Token:
        """The next token, consumed."""
        tok = self.peek()
        self.lookahead = None
        return tok

    def expect(self, kind: str, what: str) -> Token:
        """The next token if it is of ``kind``; else a SignatureError expecting ``what``."""
        tok = self.next()
        if tok.kind != kind:
            raise self.error(f"expected {what}", tok.pos, tail=f", found {self.describe(tok)}")
        return tok

    # -- tokens --------------------------------------------------------------

    def _lex(self) -> Token:
        text = self.text
        while True:
            pos = self.offset
            if pos >= len(text):
                return Token("EOF", None, len(text), "")
            m = _TOKEN_RE.match(text, pos)
            if m is None:
                raise self.error(f"unexpected character {text[pos]!r}", pos)
            self.offset = m.end()
            kind, raw = m.lastgroup, m.group()
            if kind == "WS":
                continue
            if kind == "NUMBER":
                return Token("NUMBER", self._number(raw, pos), pos, raw)
            if kind == "DQ":
                return Token("STRING", self._string(raw[1:-1], pos), pos, raw)
            if kind == "SQ":
                return Token("STRING", self._string(self._sq_to_json(raw[1:-1], pos), pos), pos, raw)
            if kind == "NAME":
                return Token("NAME", raw, pos, raw)
            return Token(raw, raw, pos, raw)  # '->', '...' and punctuation are their own kinds

    def _number(self, raw: str, pos: int) -> int | float:
        value: int | float
        if _INT_RE.fullmatch(raw):
            if len(raw.lstrip("-")) > 30:
                raise self.error(f"number {raw[:20]}... is too long", pos)
            return int(raw)
        value = float(raw)
        if not math.isfinite(value):
            raise self.error(f"number {raw[:20]!r} is out of range", pos)
        return value

    def _sq_to_json(self, body: str, pos: int) -> str:
        """The inside of a single-quoted string as the inside of a JSON string."""
        out: list[str] = []
        k = 0
        while k < len(body):
            ch = body[k]
            if ch == "\\":
                nxt = body[k + 1]  # the token regex guarantees a character after a backslash
                if nxt == "u":
                    out.append("\\u")
                elif nxt in _SQ_ESCAPES:
                    out.append(json.dumps(_SQ_ESCAPES[nxt])[1:-1])
                else:
                    raise self.error(f"invalid escape '\\{nxt}' in a string", pos + 1 + k)
                k += 2
                continue
            out.append('\\"' if ch == '"' else ch)
            k += 1
        return "".join(out)

    def _string(self, json_body: str, pos: int) -> str:
        try:
            value = json.loads(f'"{json_body}"', strict=False)  # a JSON string literal: parsing, not evaluation
        except ValueError:
            raise self.error("invalid escape in a string", pos) from None
        if not isinstance(value, str):  # pragma: no cover - the regex only admits string literals
            raise self.error("invalid string", pos)
        return value
