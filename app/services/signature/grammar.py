"""The recursive-descent parser of the string form and of type strings (nothing is evaluated)."""

from __future__ import annotations

from collections.abc import Callable

from app.errors import SignatureError
from app.services.signature.checks import (
    MAX_NAME_CHARS,
    LiteralValue,
    LiteralValues,
    field_name_problem,
    nesting_problem,
)
from app.services.signature.lexer import Lexer, Token
from app.services.signature.types import ALLOWED_TYPES, SCALARS, TYPE_NAMES, Field, TypeSpec

_BOOL_WORDS = {"true": True, "false": False, "True": True, "False": False}


class Parser(Lexer):
    """Recursive descent over a lazily tokenized text::

        signature := fields '->' fields
        fields    := [ field (',' field)* ]
        field     := NAME [ ':' type ]
        type      := primary ('|' primary)*          # a union; 'None' among them makes it Optional
        primary   := 'str' | 'int' | 'float' | 'bool' | 'Any' | 'None' | OBJECT_TYPE_NAME
                   | ('list' | 'List') '[' type ']'
                   | ('dict' | 'Dict') '[' 'str' ',' type ']'
                   | ('tuple' | 'Tuple') '[' type (',' type)* ']'
                   | ('tuple' | 'Tuple') '[' type ',' '...' ']'
                   | ('Optional' | 'optional') '[' type ']'
                   | 'Union' '[' type (',' type)* ']'
                   | 'Literal' '[' value (',' value)* ']'
        value     := STRING | NUMBER | 'True' | 'False' | 'true' | 'false'

    Type names are looked up in ``types.TYPE_NAMES``, then (in the JSON form) among the object
    types through ``resolve``. Unions mean what they mean in Python: nested ones flatten,
    duplicates go, ``None`` makes the whole Optional. Tokens are read on demand, so an error is
    reported where the parser stands (an unknown type name is refused before whatever follows it
    is even looked at).
    """

    resolve: Callable[[str], TypeSpec | None] | None = None  # an object type by name, or None

    # -- signature -------------------------------------------------------------

    def signature(self) -> tuple[list[tuple[Field, int]], list[tuple[Field, int]]]:
        """Parse the whole signature: its input and output fields, each with its position."""
        if "->" not in self.text:
            raise SignatureError(
                "missing '->' between inputs and outputs (e.g. 'question -> answer')",
                position=len(self.text) + 1,
            )
        inputs = self.fields(end="->")
        self.expect("->", "'->'")
        outputs = self.fields(end="EOF")
        return inputs, outputs

    def fields(self, end: str) -> list[tuple[Field, int]]:
        """Parse comma-separated field definitions up to the ``end`` token."""
        out: list[tuple[Field, int]] = []
        if self.peek().kind == end:
            return out
        while True:
            out.append(self.field_def())
            tok = self.peek()
            if tok.kind == end:
                return out
            if tok.kind == "->":
                raise self.error("more than one '->'", tok.pos, field="")
            if tok.kind != ",":
                after = out[-1][0].name
                wanted = "',' or '->'" if end == "->" else "',' or end of input"
                raise self.error(
                    f"expected {wanted} after field {after!r}",
                    tok.pos,
                    tail=f", found {self.describe(tok)}",
                    field=after,
                    mention_field=False,
                )
            self.next()

    def field_def(self) -> tuple[Field, int]:
        """Parse one field: its name and, after a colon, its type (str when none)."""
        self.field = None
        tok = self.next()
        if tok.kind != "NAME":
            raise self.error("expected a field name", tok.pos, tail=f", found {self.describe(tok)}")
        name = tok.value
        problem = field_name_problem(name)  # a NAME token is an identifier; too long or a keyword is left
        if problem is not None:
            raise self.error(problem, tok.pos, field=name[:MAX_NAME_CHARS], mention_field=False)
        self.field = name
        spec = TypeSpec("str")
        if self.peek().kind == ":":
            self.next()
            spec = self.type_expr(0)
        return Field(name, spec), tok.pos

    # -- types -----------------------------------------------------------------

    def whole_type(self) -> TypeSpec:
        """Parse a type that must fill the rest of the text."""
        spec = self.type_expr(0)
        tok = self.peek()
        if tok.kind != "EOF":
            raise self.error(f"unexpected {self.describe(tok)} after the type", tok.pos)
        return spec

    def type_expr(self, depth: int) -> TypeSpec:
        """Parse a type expression: members joined by ``|``."""
        start = self.peek()
        return self.union_of(self.members(depth), start)

    def members(self, depth: int) -> list[TypeSpec | None]:
        """``primary ('|' primary)*``: the members, ``None`` for 'None'."""
        members = [self.primary(depth)]
        while self.peek().kind == "|":
            self.next()
            members.append(self.primary(depth))
        return members

    def union_of(self, members: list[TypeSpec | None], start: Token) -> TypeSpec:
        """The type of members joined by ``|`` (None among them makes it Optional)."""
        if all(m is None for m in members):
            raise self.error("'None' alone is not a type (use Optional[T])", start.pos)
        try:
            return TypeSpec.union(*members)
        except SignatureError as exc:  # nesting too deep once flattened
            raise self.error(exc.message, start.pos) from None

    def open_bracket(self, name_tok: Token, depth: int, example: str) -> None:
        """Consume the ``[`` after a generic type's name; its absence is an error with an example."""
        tok = self.peek()
        if tok.kind != "[":
            raise self.error(f"'{name_tok.value}' needs type arguments", name_tok.pos, tail=f" (e.g. {example})")
        problem = nesting_problem(depth + 1)
        if problem is not None:
            raise self.error(problem, tok.pos)
        self.next()

    def close_bracket(self, name_tok: Token, hint: str) -> None:
        """Consume the ``]`` closing a generic type's arguments; its absence is an error with a hint."""
        tok = self.next()
        if tok.kind != "]":
            raise self.error(
                f"expected ']' to close '{name_tok.value}['",
                tok.pos,
                tail=f", found {self.describe(tok)} ({hint})",
            )

    def primary(self, depth: int) -> TypeSpec | None:
        """Parse one type name with its arguments (None for the None type)."""
        tok = self.next()
        if tok.kind != "NAME":
            raise self.error("expected a type", tok.pos, tail=f", found {self.describe(tok)}")
        name = tok.value
        if name == "None":
            return None
        kind = TYPE_NAMES.get(name)
        if kind in SCALARS:
            if self.peek().kind == "[":
                raise self.error(f"type '{name}' takes no arguments", self.peek().pos)
            return TypeSpec(kind)  # type: ignore[arg-type]
        if kind == "list":
            self.open_bracket(tok, depth, "list[str]")
            item = self.type_expr(depth + 1)
            self.close_bracket(tok, "list takes one item type")
            return TypeSpec.list_of(item)
        if kind == "dict":
            self.open_bracket(tok, depth, "dict[str, int]")
            key_tok = self.peek()
            key = self.type_expr(depth + 1)
            if key.kind != "str":
                raise self.error(f"dict keys must be str, not '{key}'", key_tok.pos)
            self.expect(",", "',' and a value type (dict[str, T])")
            value = self.type_expr(depth + 1)
            self.close_bracket(tok, "dict takes a key type and a value type")
            return TypeSpec.dict_of(value)
        if kind == "optional":
            self.open_bracket(tok, depth, "Optional[int]")
            inner = self.type_expr(depth + 1)
            self.close_bracket(tok, "Optional takes one type")
            return TypeSpec.optional(inner)
        if kind == "any":
            if self.peek().kind == "[":
                raise self.error("type 'Any' takes no arguments", self.peek().pos)
            return TypeSpec("any")
        if kind == "union":
            self.open_bracket(tok, depth, "Union[int, str]")
            members = self.members(depth + 1)
            while self.peek().kind == ",":
                self.next()
                members += self.members(depth + 1)
            self.close_bracket(tok, "Union members are separated by ','")
            return self.union_of(members, tok)
        if kind == "tuple":
            return self.tuple_type(tok, depth)
        if kind == "literal":
            self.open_bracket(tok, depth, "Literal['a', 'b']")
            values = LiteralValues()
            while True:
                value, vtok = self.literal_value()
                problem = values.add(value, shown=vtok.text)
                if problem is not None:
                    raise self.error(problem, vtok.pos)
                if self.peek().kind != ",":
                    break
                self.next()
            self.close_bracket(tok, "Literal values are separated by ','")
            return TypeSpec.literal(*values.values)
        if self.resolve is not None:
            spec = self.resolve(name)
            if spec is not None:
                if self.peek().kind == "[":
                    raise self.error(f"object type '{name}' takes no arguments", self.peek().pos)
                return spec
        raise self.error(f"unknown type '{name}'", tok.pos, tail=f"; allowed: {ALLOWED_TYPES}")

    def tuple_type(self, tok: Token, depth: int) -> TypeSpec:
        """``tuple[A, B]`` (fixed: exactly these items) or ``tuple[A, ...]`` (any number of A)."""
        self.open_bracket(tok, depth, "tuple[int, str] or tuple[int, ...]")
        items = [self.type_expr(depth + 1)]
        while self.peek().kind == ",":
            self.next()
            if self.peek().kind == "...":
                dots = self.next()
                if len(items) != 1:
                    raise self.error("'...' goes after the one item type of a tuple (tuple[int, ...])", dots.pos)
                self.close_bracket(tok, "'...' ends a variadic tuple")
                return TypeSpec.tuple_of(items[0], ...)  # type: ignore[arg-type]
            items.append(self.type_expr(depth + 1))
        self.close_bracket(tok, "tuple items are separated by ','")
        return TypeSpec.tuple_of(*items)

    def literal_value(self) -> tuple[LiteralValue, Token]:
        """Parse one Literal[...] value: a string, number, True, False or None."""
        tok = self.next()
        if tok.kind in ("STRING", "NUMBER"):
            return tok.value, tok
        if tok.kind == "NAME" and tok.value in _BOOL_WORDS:
            return _BOOL_WORDS[tok.value], tok
        raise self.error(
            "expected a Literal value (a quoted string, a number, True or False)",
            tok.pos,
            tail=f", found {self.describe(tok)}",
        )
