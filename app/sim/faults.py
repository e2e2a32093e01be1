"""Fault injection, per request (`x-sim-fault` header) or for every request (`SimConfig.fault`).

A spec is `key=value` pairs separated by `;` or `,`, e.g. `status=500;times=2`:

    status=503             answer with this HTTP status and vLLM's error body
    retry_after=1          with status: also send `Retry-After: 1` (seconds)
    times=2                fault only the first 2 attempts of a request; attempts of one request share
                           the `group` below, else the X-Request-Id header, else the same body
    group=r1               a name for `times` to count attempts by (a client may give each attempt
                           its own request id, as vgate does)
    rate=0.3               fault with this probability (drawn from a generator seeded by SimConfig.seed)
    slow_first_token_ms=N  hold the first token back N ms (stream: headers go out at once)
    drop_after_chunks=N    stream: send N SSE events, then cut the connection (no terminating chunk);
                           non-stream: send the headers and half the body, then cut
    malformed=1            stream: the first event after the role chunk is cut-off JSON;
                           non-stream: a 200 whose body is cut-off JSON
    stream_error=N         stream: after N events (at least 1), `data: {"error": ...}` then `data: [DONE]`,
                           all with HTTP 200 as vLLM does; non-stream: a 500 error
    hang=1                 never answer; the request ends (and counts as aborted) when the client leaves
    keepalive=1            stream: a `: keep-alive` SSE comment before every event (valid; clients must skip it)
    bad_output=text        chat/completions: a structured reply (response_format, structured_outputs) breaks
                           its format, as from a server without structured outputs: `text` (or 1) ignores
                           it (plain text); `type` writes the JSON with its first value of the wrong type
    bad_choices=K          with bad_output and n > 1: only the first K choices break (default: all)

`times` and `rate` only decide whether the fault fires; everything else says what it does.
The header replaces the configured default entirely; `x-sim-fault: none` turns it off.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections import OrderedDict
from dataclasses import dataclass, fields


class SimulatedDrop(Exception):
    """Raised after the response started so that the server closes the connection mid-body."""


@dataclass(frozen=True)
class FaultSpec:
    """A fault asked for by a request's x-sim-fault header: a status, a drop, a hang, bad output, and how often."""
    status: int | None = None
    retry_after: float | None = None
    times: int | None = None
    rate: float | None = None
    slow_first_token_ms: float = 0.0
    drop_after_chunks: int | None = None
    malformed: bool = False
    stream_error: int | None = None
    hang: bool = False
    keepalive: bool = False
    bad_output: str | None = None
    bad_choices: int | None = None
    group: str | None = None

    @classmethod
    def parse(cls, text: str) -> FaultSpec | None:
        """The spec, or None for an empty spec or `none`. Raises ValueError on a bad spec."""
        text = text.strip()
        if not text or text.lower() == "none":
            return None
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, object] = {}
        for item in text.replace(",", ";").split(";"):
            if not item.strip():
                continue
            key, sep, raw = (part.strip() for part in item.partition("="))
            if not sep or key not in types:
                raise ValueError(f"bad fault item {item.strip()!r}; keys: {', '.join(types)}")
            try:
                if key == "group":
                    values[key] = raw
                elif key == "bad_output":
                    values[key] = _bad_output(raw)
                elif key in ("malformed", "hang", "keepalive"):
                    values[key] = raw.lower() in ("1", "true", "yes", "on")
                elif "float" in types[key]:
                    values[key] = float(raw)
                else:
                    values[key] = int(raw)
            except ValueError:
                raise ValueError(f"bad value for fault {key}: {raw!r}") from None
        spec = cls(**values)  # type: ignore[arg-type]
        if spec.status is not None and not 400 <= spec.status <= 599:
            raise ValueError("fault status must be 400-599")
        if spec.rate is not None and not 0.0 <= spec.rate <= 1.0:
            raise ValueError("fault rate must be within 0-1")
        if spec.stream_error is not None and spec.stream_error < 1:
            raise ValueError("stream_error must be >= 1 (the role chunk comes first)")
        if spec.drop_after_chunks is not None and spec.drop_after_chunks < 0:
            raise ValueError("drop_after_chunks must be >= 0")
        if spec.bad_choices is not None and spec.bad_choices < 0:
            raise ValueError("bad_choices must be >= 0")
        return spec

    @property
    def kind(self) -> str:
        """A bounded label for the metrics."""
        if self.status is not None:
            return "status"
        if self.hang:
            return "hang"
        if self.drop_after_chunks is not None:
            return "drop"
        if self.malformed:
            return "malformed"
        if self.stream_error is not None:
            return "stream_error"
        if self.keepalive:
            return "keepalive"
        if self.bad_output is not None:
            return "bad_output"
        return "slow_first_token"


def _bad_output(raw: str) -> str | None:
    value = raw.lower()
    if value in ("1", "true", "yes", "on", "text"):
        return "text"
    if value == "type":
        return "type"
    if value in ("0", "false", "no", "off"):
        return None
    raise ValueError(raw)


class FaultInjector:
    """Decides, per request, which fault (if any) fires."""

    def __init__(self, default: str | None, seed: int, memory: int = 10_000) -> None:
        self._default = FaultSpec.parse(default) if default else None
        self._rng = random.Random(seed)
        self._attempts: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._memory = memory

    def pick(self, header: str | None, request_id: str | None, body: bytes) -> FaultSpec | None:
        """The fault that fires for this request attempt, if any. Raises ValueError on a bad header."""
        spec = FaultSpec.parse(header) if header is not None else self._default
        if spec is None:
            return None
        if spec.times is not None:
            attempt_of = spec.group or request_id or hashlib.blake2b(body, digest_size=16).hexdigest()
            key = (header or "", attempt_of)
            attempt = self._attempts.pop(key, 0) + 1
            self._attempts[key] = attempt
            if len(self._attempts) > self._memory:
                self._attempts.popitem(last=False)
            if attempt > spec.times:
                return None
        if spec.rate is not None and self._rng.random() >= spec.rate:
            return None
        return spec

    def reset(self) -> None:
        """Forget the attempt counts of every fault key."""
        self._attempts.clear()


class _HideSimulatedDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], SimulatedDrop))


def hide_simulated_drops() -> None:
    """Keep uvicorn from logging a traceback for every connection the simulator cuts on purpose."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _HideSimulatedDrops) for f in logger.filters):
        logger.addFilter(_HideSimulatedDrops())
