"""Automatic prefix caching, simulated like vLLM's: full blocks of 16 prompt tokens, chained hashes.

A block's hash covers its tokens and every token before it, so a cached block
means the whole prefix up to its end is cached. A request's cached tokens are
its leading blocks found in the cache (capped at prompt length - 1: the last
token is always computed). Only the remaining tokens cost prefill time in the
latency model. A request's blocks enter the cache when its prefill completes,
so requests prefilled in the same step do not share; least recently used
blocks are evicted beyond the KV capacity.
"""

from __future__ import annotations

from collections import OrderedDict

BLOCK_SIZE = 16


def block_hashes(tokens: list[str]) -> list[int]:
    """Chained hashes of the full blocks of a token sequence."""
    hashes: list[int] = []
    h = 0
    for start in range(0, len(tokens) - BLOCK_SIZE + 1, BLOCK_SIZE):
        h = hash((h, *tokens[start : start + BLOCK_SIZE]))
        hashes.append(h)
    return hashes


class PrefixCache:
    """vLLM's prefix cache, modelled: an LRU of prompt block hashes bounded by capacity."""
    def __init__(self, capacity_tokens: int) -> None:
        self._capacity = max(1, capacity_tokens // BLOCK_SIZE)
        self._blocks: OrderedDict[int, None] = OrderedDict()
        self.queries = 0  # prompt tokens looked up
        self.hits = 0  # of which cached

    def match(self, hashes: list[int], prompt_tokens: int) -> int:
        """How many leading prompt tokens are cached (and count the lookup)."""
        found = 0
        for h in hashes:
            if h not in self._blocks:
                break
            self._blocks.move_to_end(h)
            found += 1
        cached = max(0, min(found * BLOCK_SIZE, prompt_tokens - 1))
        self.queries += prompt_tokens
        self.hits += cached
        return cached

    def insert(self, hashes: list[int]) -> None:
        """Add (or refresh) the blocks of a prompt, evicting the least recently used past capacity."""
        for h in hashes:
            self._blocks[h] = None
            self._blocks.move_to_end(h)
        while len(self._blocks) > self._capacity:
            self._blocks.popitem(last=False)

    def clear(self) -> None:
        """Empty the cache."""
        self._blocks.clear()
