"""Continuous batching, simulated: who runs, who waits, and when each token exists.

Zero-latency mode (the default): a sequence gets a slot and all its tokens the
moment it is submitted; nothing sleeps.

Latency model: one asyncio task runs engine steps, like vLLM's scheduler.

* A step has a token budget of `max_num_batched_tokens`. Each decoding
  sequence takes one token of it; the rest prefills prompts in chunks: first
  the sequences already prefilling, then waiting sequences, admitted in arrival
  order while fewer than `max_num_seqs` hold a slot.
* Step time = step_base_ms + step_per_seq_ms * decoding sequences
  (+ prefill_base_ms + prefill_per_token_ms * prefilled tokens, if any).
* Only prompt tokens missing from the prefix cache (prefix_cache.py) are
  prefilled; they are looked up when a sequence is admitted.
* After a step every decoding sequence has one more token; a sequence whose
  prefill completed has its first token (TTFT = queue + prefill).

A slot is held from admission until the request's response is finished or
aborted (`release`), so `running` counts requests in flight inside the engine
and `waiting` those queued for a slot. There is no prefix cache and no preemption.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from app.sim.config import SimConfig
from app.sim.prefix_cache import PrefixCache


class Sequence:
    """One request inside the engine: its prompt, how many tokens it will produce and has produced."""

    __slots__ = ("prompt_tokens", "blocks", "total", "produced", "prefill_left", "admitted", "released", "ready",
                 "want")

    def __init__(self, prompt_tokens: int, blocks: list[int], total: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.blocks = blocks  # prefix-cache block hashes
        self.total = total  # completion tokens it will produce
        self.produced = 0
        self.prefill_left = prompt_tokens
        self.admitted = False
        self.released = False
        self.ready = asyncio.Event()  # set when `produced` exceeds `want`
        self.want = 0

    async def wait_beyond(self, count: int) -> int:
        """Wait until more than `count` tokens exist; return how many."""
        self.want = count
        while self.produced <= count:
            self.ready.clear()
            await self.ready.wait()
        return self.produced

    def advance(self) -> None:
        """Count one more generated token."""
        self.produced += 1
        if self.produced > self.want:
            self.ready.set()


class Engine:
    """The continuous-batching model: sequences wait, prefill and decode in steps, bounded by max_num_seqs and the KV
    cache."""
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.running = 0
        self.peak_running = 0
        self.prefix_cache = PrefixCache(config.kv_cache_tokens)
        self._waiting: deque[Sequence] = deque()
        self._batch: list[Sequence] = []  # admitted and still generating
        self._held: set[Sequence] = set()  # admitted and not yet released
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def waiting(self) -> int:
        """Sequences waiting to be scheduled."""
        return len(self._waiting)

    def kv_cache_usage(self) -> float:
        """The share of the KV cache in use (0 to 1)."""
        used = sum(s.prompt_tokens - s.prefill_left + s.produced for s in self._held)
        return min(1.0, used / self.config.kv_cache_tokens)

    def reset_peak(self) -> None:
        """Start measuring the peak of running sequences afresh."""
        self.peak_running = self.running

    def submit(self, seq: Sequence) -> None:
        """Add a sequence: at once without the latency model, else to the waiting queue."""
        if not self.config.latency_model:
            self._admit(seq)
            self.prefix_cache.insert(seq.blocks)
            seq.prefill_left = 0
            seq.produced = seq.total
            return
        self._waiting.append(seq)
        self._ensure_loop()
        assert self._wake is not None
        self._wake.set()

    def release(self, seq: Sequence) -> None:
        """The request is over (finished or aborted): free its slot or its place in the queue."""
        if seq.released:
            return
        seq.released = True
        if seq.admitted:
            self.running -= 1
            self._held.discard(seq)
            if self._wake is not None:
                self._wake.set()  # a free slot may admit a waiting sequence
        else:
            self._waiting.remove(seq)

    async def close(self) -> None:
        """Stop the engine's step loop."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    def _admit(self, seq: Sequence) -> None:
        seq.prefill_left = seq.prompt_tokens - self.prefix_cache.match(seq.blocks, seq.prompt_tokens)
        seq.admitted = True
        self._held.add(seq)
        self.running += 1
        if self.running > self.peak_running:
            self.peak_running = self.running

    def _ensure_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            self._loop = loop
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._run(), name="sim-engine")

    async def _run(self) -> None:
        cfg = self.config
        assert self._wake is not None
        while True:
            self._batch = [s for s in self._batch if not s.released and s.produced < s.total]
            if not self._batch and not (self._waiting and self.running < cfg.max_num_seqs):
                self._wake.clear()
                await self._wake.wait()
                continue
            decoding = [s for s in self._batch if s.prefill_left == 0]
            budget = cfg.max_num_batched_tokens - len(decoding)
            prefilling: list[Sequence] = []
            prefilled = 0
            candidates = [s for s in self._batch if s.prefill_left]
            while True:
                for seq in candidates:
                    if budget <= 0:
                        break
                    take = min(seq.prefill_left, budget)
                    seq.prefill_left -= take
                    budget -= take
                    prefilled += take
                    prefilling.append(seq)
                if budget <= 0 or not self._waiting or self.running >= cfg.max_num_seqs:
                    break
                seq = self._waiting.popleft()
                self._admit(seq)
                self._batch.append(seq)
                candidates = [seq]
            step_ms = cfg.step_base_ms + cfg.step_per_seq_ms * len(decoding)
            if prefilled:
                step_ms += cfg.prefill_base_ms + cfg.prefill_per_token_ms * prefilled
            await asyncio.sleep(step_ms / 1000.0)
            for seq in decoding:
                seq.advance()
            for seq in prefilling:
                if seq.prefill_left == 0:
                    self.prefix_cache.insert(seq.blocks)
                    seq.advance()
