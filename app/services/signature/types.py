"""The types of a signature: the type whitelist, TypeSpec, ObjectType and Field (immutable, hashable)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any, Literal, Optional, Union

from app.errors import SignatureError
from app.services.signature.checks import (
    MAX_DESC_CHARS,
    MAX_OBJECT_DEPTH,
    FieldNames,
    LiteralValue,
    LiteralValues,
    check_field_name,
    clean_text,
    literal_text,
    nesting_problem,
    type_name_problem,
)
from app.services.signature.constraints import Constraints
from app.services.signature.schema import object_model, type_schema

# --- the type whitelist -----------------------------------------------------------------------
# The one place that says which types a signature may use. A new type needs: a kind in ``Kind``,
# its spelling(s) in ``TYPE_NAMES``, a line in ``ALLOWED_TYPES``, its case in the TypeSpec
# methods that switch on the kind (``_canonical_text``, ``depth``, ``to_annotation``), and its
# syntax in ``grammar.Parser.primary``. JSON schemas and validators follow from the annotation
# (``schema.py`` and ``validate.py`` only add metadata through ``to_annotation``'s callbacks).
# Object types are not whitelisted names: a signature declares them (``ObjectType``), and the
# grammar finds them through its ``resolve`` callback after the whitelist.

Kind = Literal[
    "str", "int", "float", "bool", "any", "list", "dict", "tuple", "literal", "optional", "union", "object"
]

SCALARS: Mapping[str, type] = {"str": str, "int": int, "float": float, "bool": bool}

TYPE_NAMES: Mapping[str, Kind] = {  # what a type may be called in a signature
    "str": "str",
    "int": "int",
    "float": "float",
    "bool": "bool",
    "Any": "any",
    "list": "list",
    "List": "list",
    "dict": "dict",
    "Dict": "dict",
    "tuple": "tuple",
    "Tuple": "tuple",
    "Optional": "optional",
    "optional": "optional",
    "Union": "union",
    "Literal": "literal",
}

ALLOWED_TYPES = (
    "str, int, float, bool, Any, list[T], dict[str, T], tuple[T1, T2] and tuple[T, ...], Literal[...], "
    "Optional[T], Union[A, B] (A | B), and the object types of the signature's 'types'"
)

_CONTAINERS = ("list", "dict", "optional")


@dataclass(frozen=True, eq=False)
class TypeSpec:
    """One whitelisted type.

    ``args`` by kind: scalars and ``any`` ``()``; ``list`` ``(item,)``; ``dict`` ``(value,)`` (keys are
    always ``str``); ``optional`` ``(inner,)``; ``tuple`` the item types, or ``(item, ...)`` (the
    Ellipsis) for a variadic one; ``union`` two or more members (none Optional or a union: build it
    with :meth:`union`, which flattens); ``literal`` the allowed values (str, int, float, bool);
    ``object`` ``(ObjectType,)``. Equality and hashing go by the canonical text and the definitions
    of the object types it names, so ``Literal[1]`` and ``Literal[True]`` differ, and so do two
    ``Contact`` types with different fields.
    """

    kind: Kind
    args: tuple[Any, ...] = ()
    _text: str = dc_field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "args", tuple(self.args))
        text = self._canonical_text()
        problem = nesting_problem(self.depth)
        if problem is not None:
            raise SignatureError(f"{problem}: {text}")
        object.__setattr__(self, "_text", text)
        objects: dict[ObjectType, None] = {}
        for arg in self.args:
            if isinstance(arg, ObjectType):
                objects[arg] = None
            elif isinstance(arg, TypeSpec):
                objects.update(dict.fromkeys(arg.objects()))
        object.__setattr__(self, "_objects", tuple(objects))
        object.__setattr__(self, "_hash", hash(("TypeSpec", text, self._objects)))

    def _canonical_text(self) -> str:
        kind, args = self.kind, self.args
        if kind in SCALARS or kind == "any":
            if args:
                raise SignatureError(f"type '{kind}' takes no arguments")
            return "Any" if kind == "any" else kind
        if kind in _CONTAINERS:
            if len(args) != 1 or not isinstance(args[0], TypeSpec):
                raise SignatureError(f"type '{kind}' takes exactly one TypeSpec argument")
            inner = args[0]
            if kind == "optional" and inner.kind == "optional":
                raise SignatureError("Optional[Optional[T]] must be written Optional[T]")
            return {"list": f"list[{inner}]", "dict": f"dict[str, {inner}]", "optional": f"Optional[{inner}]"}[kind]
        if kind == "tuple":
            if len(args) == 2 and args[1] is Ellipsis and isinstance(args[0], TypeSpec):
                return f"tuple[{args[0]}, ...]"
            if not args or not all(isinstance(a, TypeSpec) for a in args):
                raise SignatureError("type 'tuple' takes one or more TypeSpec items, or (item, ...)")
            return "tuple[" + ", ".join(str(a) for a in args) + "]"
        if kind == "union":
            if len(args) < 2 or not all(isinstance(a, TypeSpec) for a in args):
                raise SignatureError("a union takes two or more TypeSpec members")
            if any(a.kind in ("optional", "union") for a in args):
                raise SignatureError("union members must not be Optional or unions (TypeSpec.union flattens them)")
            if len(set(args)) != len(args):
                raise SignatureError("duplicate union member")
            return " | ".join(str(a) for a in args)
        if kind == "literal":
            if not args:
                raise SignatureError("Literal needs at least one value")
            values = LiteralValues()
            for value in args:
                problem = values.add(value)
                if problem is not None:
                    raise SignatureError(problem)
            return "Literal[" + ", ".join(literal_text(v) for v in args) + "]"
        if kind == "object":
            if len(args) != 1 or not isinstance(args[0], ObjectType):
                raise SignatureError("an object type takes exactly one ObjectType argument")
            return args[0].name
        raise SignatureError(f"unknown type kind {kind!r}")

    # -- constructors --------------------------------------------------------

    @classmethod
    def scalar(cls, name: str) -> TypeSpec:
        """A scalar type: str, int, float, bool or Any."""
        return cls(name)  # type: ignore[arg-type]

    @classmethod
    def list_of(cls, item: TypeSpec) -> TypeSpec:
        """list[item]."""
        return cls("list", (item,))

    @classmethod
    def dict_of(cls, value: TypeSpec) -> TypeSpec:
        """dict[str, value]."""
        return cls("dict", (value,))

    @classmethod
    def tuple_of(cls, *items: TypeSpec) -> TypeSpec:
        """``tuple[A, B]``; ``tuple_of(item, ...)`` is the variadic ``tuple[item, ...]``."""
        return cls("tuple", items)

    @classmethod
    def optional(cls, inner: TypeSpec) -> TypeSpec:
        """Optional[inner] (inner itself when already optional)."""
        return inner if inner.kind == "optional" else cls("optional", (inner,))

    @classmethod
    def union(cls, *members: TypeSpec | None) -> TypeSpec:
        """Python's meaning: nested unions flatten, duplicates go, ``None`` (or an Optional member)
        makes the whole Optional, one member left is that member."""
        flat: dict[TypeSpec, None] = {}
        optional = False
        for member in members:
            if member is None:
                optional = True
                continue
            if member.kind == "optional":
                optional, member = True, member.args[0]
            for m in member.args if member.kind == "union" else (member,):
                flat[m] = None
        if not flat:
            raise SignatureError("a union needs at least one member other than None")
        spec = next(iter(flat)) if len(flat) == 1 else cls("union", tuple(flat))
        return cls.optional(spec) if optional else spec

    @classmethod
    def literal(cls, *values: LiteralValue) -> TypeSpec:
        """Literal[values]."""
        return cls("literal", values)

    @classmethod
    def of_object(cls, obj: ObjectType) -> TypeSpec:
        """A named object type."""
        return cls("object", (obj,))

    # -- identity ------------------------------------------------------------

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"TypeSpec({self._text!r})"

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        return (
            isinstance(other, TypeSpec) and other._text == self._text and other._objects == self._objects
        )

    def __hash__(self) -> int:
        return self._hash  # type: ignore[no-any-return]

    @property
    def is_optional(self) -> bool:
        """Whether None is allowed."""
        return self.kind == "optional"

    @property
    def depth(self) -> int:
        """Bracket nesting of the canonical text: 0 for scalars and object type names, 1 for
        ``list[str]`` or ``Literal[...]``; a union is as deep as its deepest member."""
        if self.kind in SCALARS or self.kind in ("any", "object"):
            return 0
        if self.kind == "literal":
            return 1
        members = [a.depth for a in self.args if isinstance(a, TypeSpec)]
        return max(members) if self.kind == "union" else 1 + max(members, default=0)

    def objects(self) -> tuple[ObjectType, ...]:
        """The object types this type names directly (not those inside them), in order."""
        return self._objects  # type: ignore[no-any-return]

    # -- conversions ----------------------------------------------------------

    def to_annotation(
        self,
        wrap: Callable[[TypeSpec, Any], Any] | None = None,
        objects: Callable[[ObjectType], Any] | None = None,
    ) -> Any:
        """The plain Python type: ``str``, ``list[str]``, ``dict[str, int]``, ``tuple[int, str]``,
        ``Literal['a', 1]``, ``Optional[int]``, ``Union[int, str]``, ``Any``. Built from the parsed
        spec, never from text.

        ``wrap(spec, annotation)``, when given, replaces each node's annotation, innermost first:
        validation and schema generation add their metadata this way, so the kinds are spelled
        out here only. ``objects(object_type)`` gives an object type's annotation (a pydantic model;
        by default the one the JSON schema is made from)."""
        kind = self.kind
        if kind in SCALARS:
            annotation: Any = SCALARS[kind]
        elif kind == "any":
            annotation = Any
        elif kind == "object":
            annotation = (objects or object_model)(self.args[0])
        elif kind == "literal":
            annotation = Literal[self.args]  # type: ignore[valid-type]
        elif kind == "optional" and self.args[0].kind == "union":
            # flat: Union[A, B, None], as Python spells Optional[A | B] (and one anyOf in the schema)
            members = [m.to_annotation(wrap, objects) for m in self.args[0].args]
            annotation = Union[(*members, type(None))]  # noqa: UP007
        else:
            inner = [a.to_annotation(wrap, objects) for a in self.args if isinstance(a, TypeSpec)]
            if kind == "list":
                annotation = list[inner[0]]  # type: ignore[valid-type]
            elif kind == "dict":
                annotation = dict[str, inner[0]]  # type: ignore[valid-type]
            elif kind == "optional":
                annotation = Optional[inner[0]]  # noqa: UP007
            elif kind == "union":
                annotation = Union[tuple(inner)]  # noqa: UP007
            elif self.args[-1] is Ellipsis:
                annotation = tuple[inner[0], ...]  # type: ignore[valid-type]
            else:
                annotation = tuple[tuple(inner)]  # type: ignore[misc]
        return annotation if wrap is None else wrap(self, annotation)

    def to_json_schema(self) -> dict[str, Any]:
        """The JSON schema: ``enum`` for Literal, ``anyOf`` for unions (with null for Optional),
        ``prefixItems`` for fixed tuples, ``{}`` for Any; object types in ``$defs``, by ``$ref``."""
        return type_schema(self)


@dataclass(frozen=True, eq=False)
class ObjectType:
    """A named object type of the JSON form's ``types``: its fields, in the same form as inputs and
    outputs (type, desc, constraints). Equal by name and fields; validated values are plain dicts."""

    name: str
    fields: tuple[Field, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(self.fields))
        problem = type_name_problem(self.name)
        if problem is not None:
            raise SignatureError(problem, **({"type_name": self.name[:100]} if isinstance(self.name, str) else {}))
        details = {"type_name": self.name}
        if not self.fields:
            raise SignatureError(f"object type {self.name!r} has no fields", **details)
        names = FieldNames()
        for f in self.fields:
            if not isinstance(f, Field):
                raise SignatureError(f"fields of object type {self.name!r} must be Field objects", **details)
            problem = names.add(f.name) or names.too_many()
            if problem is not None:
                raise SignatureError(f"{problem} in object type {self.name!r}", field=f.name, **details)
        depth = 1 + max((o.depth for f in self.fields for o in f.type.objects()), default=0)
        if depth > MAX_OBJECT_DEPTH:
            raise SignatureError(
                f"object type {self.name!r} nests object types {depth} deep (max {MAX_OBJECT_DEPTH})", **details
            )
        object.__setattr__(self, "depth", depth)
        object.__setattr__(self, "_hash", hash(("ObjectType", self.name, self.fields)))

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        return isinstance(other, ObjectType) and other.name == self.name and other.fields == self.fields

    def __hash__(self) -> int:
        return self._hash  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"ObjectType({self.name!r}, {', '.join(str(f) for f in self.fields)})"

    def to_dict(self) -> dict[str, Any]:
        """The object type's fields in the JSON signature form."""
        return {f.name: f.to_dict() for f in self.fields}


def walk_objects(fields: tuple[Field, ...]) -> Iterator[ObjectType]:
    """Every object type the fields use, inside one another too, once each, in order of first use."""
    seen: set[ObjectType] = set()

    def visit(obj: ObjectType) -> Iterator[ObjectType]:
        if obj in seen:
            return
        seen.add(obj)
        yield obj
        for f in obj.fields:
            for inner in f.type.objects():
                yield from visit(inner)

    for f in fields:
        for obj in f.type.objects():
            yield from visit(obj)


@dataclass(frozen=True)
class Field:
    """One input or output field (or a field of an object type)."""

    name: str
    type: TypeSpec = dc_field(default_factory=lambda: TypeSpec("str"))
    desc: str | None = None
    constraints: Constraints = dc_field(default_factory=Constraints)

    def __post_init__(self) -> None:
        check_field_name(self.name)
        if not isinstance(self.type, TypeSpec):
            raise SignatureError(f"type of field {self.name!r} must be a TypeSpec", field=self.name)
        desc = clean_text(self.desc, what=f"desc of field {self.name!r}", limit=MAX_DESC_CHARS, field=self.name)
        object.__setattr__(self, "desc", desc)
        if not isinstance(self.constraints, Constraints):
            raise SignatureError(f"constraints of field {self.name!r} must be Constraints", field=self.name)
        problem = self.constraints.fit_problem(self.type)
        if problem is not None:
            raise SignatureError(f"{problem} for field {self.name!r}", field=self.name)

    def __str__(self) -> str:
        return f"{self.name}: {self.type}"

    def to_dict(self) -> dict[str, Any]:
        """The field in the JSON signature form: its type, description and constraints."""
        out: dict[str, Any] = {"type": str(self.type)}
        if self.desc is not None:
            out["desc"] = self.desc
        out.update(self.constraints.items())
        return out
