"""Deterministic content: plain answers, reasoning, and JSON that validates against a schema.

Everything is drawn from one `random.Random` seeded by a hash of (seed, prompt),
so the same request gives the same output, streamed or not.

Schema support: `type` (one or a list), object (`properties`, `required`,
`additionalProperties`, `minProperties`), string (`enum`, `const`, `minLength`,
`maxLength`, common `format`s; `pattern` is not honoured), integer and number
(`minimum`, `maximum`, exclusive bounds, `multipleOf`), boolean, null, array
(`items`, `prefixItems`, `minItems`, `maxItems`, `uniqueItems`), `anyOf` /
`oneOf` (the first non-null branch), `allOf` (merged), `$ref` into `$defs` /
`definitions`. Optional properties are all filled in near the top and left out
deeper down, so recursive schemas end.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from typing import Any

_WORD_RE = re.compile(r"[A-Za-z][A-Za-z'-]{2,}")
_STOPWORDS = frozenset(
    "the and are was were for with from that this these those what which who whom whose how why when where "
    "does did can could would should will shall may might must has have had not but you your yours our ours "
    "they them their its into about please tell give answer question use using call json reply respond "
    "return only one two some any all also just than then there here very explain describe list write "
    "summarize summarise name show find compute calculate".split()
)
_FALLBACK_TOPICS = ("your request", "the context", "the details")
_OPENINGS = ("Here is a short answer about {a}.", "In brief, {a} is the point.", "Put simply, it comes down to {a}.")
_SENTENCES = (
    "The details of {a} depend on {b}.",
    "A careful look at {a} and {b} gives a clear picture.",
    "Most sources agree on the role of {a}.",
    "{A} and {b} are closely related.",
    "It helps to consider {b} as well.",
    "That covers the essentials of {a}.",
)
_NAMES = ("Ada Lovelace", "Alan Turing", "Grace Hopper", "Edsger Dijkstra", "Barbara Liskov", "Donald Knuth")
_FORMATS = {
    "date": "2026-11-25",
    "date-time": "2026-11-25T12:00:00Z",
    "time": "12:00:00Z",
    "email": "ada@example.com",
    "uri": "https://example.com/item",
    "url": "https://example.com/item",
    "uuid": "123e4567-e89b-42d3-a456-426614174000",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "hostname": "example.com",
}
_TYPES = frozenset(("null", "boolean", "string", "integer", "number", "array", "object"))
_SOFT_DEPTH = 3  # below this, optional properties and array items are left out
_HARD_DEPTH = 32


def seeded_rng(seed: int, key: str) -> random.Random:
    """A random generator seeded by the seed and a key, the same on every run."""
    digest = hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


def topics(text: str, limit: int = 4) -> list[str]:
    """Distinct content words of a text, in order of appearance."""
    seen: dict[str, str] = {}
    for word in _WORD_RE.findall(text):
        key = word.lower()
        if key not in _STOPWORDS and key not in seen:
            seen[key] = word if word[1:].islower() or word.isupper() else key
            if len(seen) == limit:
                break
    return list(seen.values()) or list(_FALLBACK_TOPICS)


def _fill(rng: random.Random, template: str, words: list[str]) -> str:
    a = rng.choice(words)
    b = rng.choice([w for w in words if w != a] or words)
    return template.format(a=a, A=a[:1].upper() + a[1:], b=b)


def phrase(rng: random.Random, words: list[str]) -> str:
    """A short phrase about the prompt's topics, for string values."""
    picked = rng.sample(words, min(len(words), 2))
    text = " and ".join(picked)
    return text[:1].upper() + text[1:]


def plain_text(rng: random.Random, words: list[str], min_tokens: int = 0) -> str:
    """One to three sentences about the prompt's topics; longer if `min_tokens` asks for it."""
    from app.sim.tokens import count_tokens

    sentences = [_fill(rng, rng.choice(_OPENINGS), words)]
    sentences += [_fill(rng, rng.choice(_SENTENCES), words) for _ in range(rng.randint(0, 2))]
    text = " ".join(sentences)
    while count_tokens(text) < min_tokens:
        text += " " + _fill(rng, rng.choice(_SENTENCES), words)
    return text


def reasoning_text(rng: random.Random, words: list[str], plan: str) -> str:
    """Deterministic reasoning text that mentions the prompt's words and states a plan."""
    opening = _fill(rng, "The user asks about {a}. Let me think about {b} first.", words)
    return f"{opening} {plan}"


# --- JSON Schema -> a valid instance ---------------------------------------------------------


def instance_for_schema(schema: Any, rng: random.Random, words: list[str]) -> Any:
    """A value that validates against `schema` (see the module docstring for the keywords)."""
    return _Builder(schema, rng, words).value(schema, "", 0)


class _Builder:
    def __init__(self, root: Any, rng: random.Random, words: list[str]) -> None:
        self.root = root
        self.rng = rng
        self.words = words

    def resolve(self, schema: Any) -> Any:
        for _ in range(_HARD_DEPTH):
            if not (isinstance(schema, dict) and isinstance(schema.get("$ref"), str)):
                break
            target: Any = self.root
            ref = schema["$ref"]
            for part in ref.lstrip("#").split("/"):
                if part:
                    part = part.replace("~1", "/").replace("~0", "~")
                    target = target.get(part) if isinstance(target, dict) else None
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **rest} if isinstance(target, dict) else rest
        return schema

    def value(self, schema: Any, name: str, depth: int) -> Any:
        if depth > _HARD_DEPTH:
            raise ValueError("schema recursion too deep for the simulator")
        schema = self.resolve(schema)
        if schema is True or not isinstance(schema, dict):
            return self.string({}, name, depth)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return self.rng.choice(schema["enum"])
        if isinstance(schema.get("allOf"), list):
            return self.value(self.merge(schema), name, depth)
        for key in ("anyOf", "oneOf"):
            if isinstance(schema.get(key), list) and schema[key]:
                return self.value(self.branch(schema, key, depth), name, depth)
        kind = schema.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if k != "null"]
            kind = "null" if not kinds or (depth >= _SOFT_DEPTH and "null" in kind) else kinds[0]
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
        if kind not in _TYPES:
            raise ValueError(f"unsupported schema type {kind!r}")
        return getattr(self, kind)(schema, name, depth)

    def merge(self, schema: dict[str, Any]) -> dict[str, Any]:
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            part = self.resolve(part)
            if not isinstance(part, dict):
                continue
            for key, val in part.items():
                if key == "properties":
                    merged["properties"] = {**merged.get("properties", {}), **val}
                elif key == "required":
                    merged["required"] = list(dict.fromkeys([*merged.get("required", []), *val]))
                else:
                    merged.setdefault(key, val)
        return merged

    def branch(self, schema: dict[str, Any], key: str, depth: int) -> dict[str, Any]:
        options = [self.resolve(o) for o in schema[key]]
        nulls = [o for o in options if isinstance(o, dict) and o.get("type") == "null"]
        others = [o for o in options if o not in nulls]
        chosen = nulls[0] if nulls and (not others or depth >= _SOFT_DEPTH) else others[0]
        rest = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
        return {**rest, **chosen} if isinstance(chosen, dict) else chosen

    def null(self, schema: dict[str, Any], name: str, depth: int) -> None:
        return None

    def boolean(self, schema: dict[str, Any], name: str, depth: int) -> bool:
        return self.rng.random() < 0.5

    def string(self, schema: dict[str, Any], name: str, depth: int) -> str:
        key = name.lower()
        fmt = schema.get("format")
        if fmt in _FORMATS:
            text = _FORMATS[fmt]
        elif "email" in key:
            text = f"{self.words[0].split()[0]}@example.com"
        elif key.endswith(("url", "uri", "link")):
            text = f"https://example.com/{self.words[0].replace(' ', '-')}"
        elif key == "name" or key.endswith("_name") or key in ("author", "person"):
            text = self.rng.choice(_NAMES)
        elif key == "id" or key.endswith("_id"):
            text = f"{self.rng.getrandbits(32):08x}"
        elif "date" in key:
            text = _FORMATS["date"]
        else:
            text = phrase(self.rng, self.words)
        lo = int(schema.get("minLength", 0))
        hi = schema.get("maxLength")
        while len(text) < lo:
            text += " " + phrase(self.rng, self.words)
        return text if hi is None else text[: int(hi)]

    def _bounds(self, schema: dict[str, Any], default_lo: float, default_hi: float) -> tuple[float, float, bool, bool]:
        lo, hi = schema.get("minimum"), schema.get("maximum")
        ex_lo, ex_hi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        open_lo = open_hi = False
        if isinstance(ex_lo, bool):  # draft 4: a flag on minimum
            open_lo = ex_lo and lo is not None
        elif ex_lo is not None and (lo is None or ex_lo >= lo):
            lo, open_lo = ex_lo, True
        if isinstance(ex_hi, bool):
            open_hi = ex_hi and hi is not None
        elif ex_hi is not None and (hi is None or ex_hi <= hi):
            hi, open_hi = ex_hi, True
        span = default_hi - default_lo
        if lo is None:
            lo = default_lo if hi is None else hi - span
        if hi is None:
            hi = lo + span
        return lo, hi, open_lo, open_hi

    def integer(self, schema: dict[str, Any], name: str, depth: int) -> int:
        lo, hi, open_lo, open_hi = self._bounds(schema, 0, 100)
        lo = math.floor(lo) + 1 if open_lo else math.ceil(lo)
        hi = math.ceil(hi) - 1 if open_hi else math.floor(hi)
        step = schema.get("multipleOf")
        if isinstance(step, int) and step > 0:
            first, last = -(-lo // step), hi // step
            return step * self.rng.randint(first, max(first, last))
        return self.rng.randint(lo, max(lo, hi))

    def number(self, schema: dict[str, Any], name: str, depth: int) -> float | int:
        if isinstance(schema.get("multipleOf"), int):
            return self.integer(schema, name, depth)
        lo, hi, open_lo, open_hi = self._bounds(schema, 0.0, 100.0)
        value = round(self.rng.uniform(lo, hi), 2)
        if value < lo or value > hi or (open_lo and value <= lo) or (open_hi and value >= hi):
            value = (lo + hi) / 2
        return value

    def array(self, schema: dict[str, Any], name: str, depth: int) -> list[Any]:
        prefix = schema.get("prefixItems")
        items = schema.get("items", {})
        if isinstance(items, list):  # draft 4 tuple form
            prefix, items = items, schema.get("additionalItems", {})
        prefix = prefix or []
        lo = int(schema.get("minItems", 0))
        hi = int(schema.get("maxItems", max(lo, 3)))
        want = lo if depth >= _SOFT_DEPTH else self.rng.randint(max(lo, 1), max(lo, 1, min(hi, 3)))
        want = max(min(want, hi), min(len(prefix), hi))
        item_name = name[:-1] if name.endswith("s") else name
        out: list[Any] = [self.value(s, item_name, depth + 1) for s in prefix[:want]]
        tries = 0
        while len(out) < want and items is not False and tries < want * 8:
            tries += 1
            value = self.value(items, item_name, depth + 1)
            if schema.get("uniqueItems") and value in out:
                continue
            out.append(value)
        return out

    def object(self, schema: dict[str, Any], name: str, depth: int) -> dict[str, Any]:
        props = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        out: dict[str, Any] = {}
        for key, sub in props.items():
            if key in required or depth < _SOFT_DEPTH:
                out[key] = self.value(sub, key, depth + 1)
        for key in required - out.keys():  # required but not described: any value
            out[key] = self.string({}, key, depth + 1)
        extra = schema.get("additionalProperties", True)
        want = int(schema.get("minProperties", 0 if props else 1))
        index = 0
        while len(out) < want and extra is not False:
            key = self.words[index % len(self.words)].replace(" ", "_") + (f"_{index}" if index else "")
            index += 1
            if key not in out:
                out[key] = self.value(extra, key, depth + 1)
        return out
