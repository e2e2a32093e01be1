"""Parsing one streamed chunk: the LM client's typed parse against ``json.loads`` + walking dicts.

    .venv/bin/python benchmarks/chunk_parse.py        # ~5 s

Both read what the client needs from a vLLM 0.33 content chunk (content, reasoning, tool calls,
finish reason, usage). Prints µs per chunk for each, best of 5 rounds, and their ratio. The
parse runs once per streamed token, so it is on the hot path of every call.
"""

from __future__ import annotations

import json
import time

from app.services.lm.stream import Accumulator, parse_chunk
from app.services.lm.types import ContentDelta

CHUNK = json.dumps({
    "id": "chatcmpl-0b7d3c9e4f1a4c2b8d6e5f4a3b2c1d0e-1", "object": "chat.completion.chunk", "created": 1764620000,
    "model": "Qwen/Qwen3-14B",
    "choices": [{"index": 0, "delta": {"content": " hello"}, "logprobs": None, "finish_reason": None}],
})
N = 50_000


def walk_dicts() -> None:
    """The client before the typed parse (ba22300's _Accumulator.feed), on the same chunk."""
    content: list[str] = []
    for _ in range(N):
        d = json.loads(CHUNK)
        events = []
        for c in d.get("choices") or ():
            delta = c.get("delta") or {}
            text = delta.get("content")
            if text:
                content.append(text)
                events.append(ContentDelta(text))
            thought = delta.get("reasoning") or delta.get("reasoning_content")
            if thought:
                events.append(thought)
            for _tc in delta.get("tool_calls") or ():
                pass
            c.get("finish_reason")
        d.get("usage")
        content.clear()


def typed() -> None:
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
    a, b = best_us(walk_dicts), best_us(typed)
    print(f"json.loads + dict walk (old) {a:6.2f} us/chunk")
    print(f"typed parse + accumulate    {b:6.2f} us/chunk   ratio new/old {b / a:.2f}")
