"""Parsing one streamed chunk: the LM client's typed decode (msgspec) against the alternatives.

    .venv/bin/python benchmarks/chunk_parse.py        # ~10 s; pin it: taskset -c 1 ...

All read what the client needs from a vLLM 0.33 content chunk (content, reasoning, tool calls,
finish reason, usage). Prints µs per chunk, best of 5 rounds, and the ratio to the old client. The
parse runs once per streamed token, so it is on the hot path of every call.

- old: ``json.loads`` and walking the dicts (the client at ba22300, without its accumulation);
- pydantic: ``BaseModel.model_validate_json`` into models of the same shape (the other typed option);
- msgspec: ``app.services.lm.stream.parse_chunk`` alone, and with ``Accumulator.feed`` (what a call does).
"""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import BaseModel

from app.services.lm.stream import Accumulator, parse_chunk

CHUNK = json.dumps({
    "id": "chatcmpl-0b7d3c9e4f1a4c2b8d6e5f4a3b2c1d0e-1", "object": "chat.completion.chunk", "created": 1764620000,
    "model": "Qwen/Qwen3-14B",
    "choices": [{"index": 0, "delta": {"content": " hello"}, "logprobs": None, "finish_reason": None}],
})
N = 50_000


class _F(BaseModel):
    name: str | None = None
    arguments: str | None = None


class _T(BaseModel):
    index: int = 0
    id: str | None = None
    function: _F | None = None


class _D(BaseModel):
    content: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[_T] | None = None


class _C(BaseModel):
    index: int = 0
    delta: _D | None = None
    finish_reason: str | None = None


class _U(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Chunk(BaseModel):
    id: str | None = None
    model: str | None = None
    choices: list[_C] = []
    usage: _U | None = None
    error: dict[str, Any] | str | None = None


def old() -> None:
    for _ in range(N):
        d = json.loads(CHUNK)
        for c in d.get("choices") or ():
            delta = c.get("delta") or {}
            delta.get("content")
            delta.get("reasoning") or delta.get("reasoning_content")
            for _tc in delta.get("tool_calls") or ():
                pass
            c.get("finish_reason")
        d.get("usage")


def pydantic_parse() -> None:
    for _ in range(N):
        _Chunk.model_validate_json(CHUNK)


def msgspec_parse() -> None:
    for _ in range(N):
        parse_chunk(CHUNK)


def msgspec_feed() -> None:
    acc = Accumulator()
    for _ in range(N):
        acc.feed(parse_chunk(CHUNK))
        acc.content.clear()


def best_us(fn) -> float:
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best / N * 1e6


if __name__ == "__main__":
    base = best_us(old)
    print(f"old: json.loads + dict walk       {base:6.2f} us/chunk")
    for name, fn in (("pydantic model_validate_json", pydantic_parse), ("msgspec parse_chunk", msgspec_parse),
                     ("msgspec parse_chunk + feed", msgspec_feed)):
        us = best_us(fn)
        print(f"{name:33s}{us:6.2f} us/chunk   x old {us / base:.2f}")
