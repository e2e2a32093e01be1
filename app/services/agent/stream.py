"""How model text becomes ``delta`` and ``reasoning`` events."""

from __future__ import annotations

import time

from app.services.agent.runs import AgentRun


class Coalescer:
    """Joins token deltas into events of up to ~64 characters or 50 ms: each event is kept for
    resumable streams, so one event per token would make a long run's log needlessly large."""

    MAX_CHARS = 64
    MAX_AGE_S = 0.05

    def __init__(self, run: AgentRun, event: str) -> None:
        self.run = run
        self.event = event
        self.parts: list[str] = []
        self.size = 0
        self.since = 0.0

    def add(self, piece: str) -> None:
        if not self.parts:
            self.since = time.perf_counter()
        self.parts.append(piece)
        self.size += len(piece)
        if self.size >= self.MAX_CHARS or time.perf_counter() - self.since >= self.MAX_AGE_S:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            self.run.publish(self.event, {"text": "".join(self.parts)})
            self.parts.clear()
            self.size = 0
