"""How model text becomes ``delta`` and ``reasoning`` events."""

from __future__ import annotations

import asyncio

from app.services.agent.runs import AgentRun


class Coalescer:
    """Joins token pieces into events of up to ~64 characters or 50 ms: each event is kept for
    resumable streams, so one event per token would make a long run's log needlessly large.

    One coalescer per run keeps the model's order: a piece of another kind (reasoning, then
    answer text) or of another step first publishes what is pending. Each event names its step
    (``{"text", "step"}``): a client tells the final step's deltas, the answer, from the text of a
    step that ended in tool calls. A pending piece is published at most
    ``MAX_AGE_S`` after it came, even if no further token arrives (a slow stream, a pause).
    """

    MAX_CHARS = 64
    MAX_AGE_S = 0.05

    def __init__(self, run: AgentRun) -> None:
        self.run = run
        self.kind: str | None = None
        self.step = 0
        self.parts: list[str] = []
        self.size = 0
        self._timer: asyncio.TimerHandle | None = None

    def add(self, kind: str, piece: str, step: int) -> None:
        """Add a piece of text of a kind (delta, reasoning) and step; a change of either flushes what is held."""
        if not piece:
            return
        if kind != self.kind or step != self.step:
            self.flush()
            self.kind, self.step = kind, step
        self.parts.append(piece)
        self.size += len(piece)
        if self.size >= self.MAX_CHARS:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.MAX_AGE_S, self.flush)

    def flush(self) -> None:
        """Publish the held text as one event now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.parts:
            self.run.publish(self.kind or "delta", {"text": "".join(self.parts), "step": self.step})
            self.parts.clear()
            self.size = 0
