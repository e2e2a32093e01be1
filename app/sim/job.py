"""One HTTP request's work: the completions the engine produces for it, and how its answer is written.

Every endpoint that runs the model (chat completions, completions, responses, embeddings) turns
its request into a `Job`. The server runs every job the same way (server.py): the fault, one
engine sequence per completion, the disconnect watch, the counters; only the `Writer`, which
renders the answer, is the endpoint's own.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Protocol

from app.sim.completion import Completion
from app.sim.config import SimConfig
from app.sim.faults import FaultSpec

_TRUE = (b"1", b"true", b"yes", b"on")

Piece = tuple[str, int, str]


@dataclass
class Call:
    """What the server knows of a request before its endpoint parses the body."""

    raw: bytes
    config: SimConfig
    request_id: str | None = None  # the X-Request-Id header
    reasoning_header: bytes | None = None  # the x-sim-reasoning header
    created: int = field(default_factory=lambda: int(time.time()))
    fault: FaultSpec | None = None  # the fault picked for it, when it changes what the model writes

    def bad_output(self, choice: int) -> str | None:
        """How the `bad_output` fault breaks this choice's structured reply (None: it does not)."""
        f = self.fault
        if f is None or f.bad_output is None or (f.bad_choices is not None and choice >= f.bad_choices):
            return None
        return f.bad_output

    def response_id(self, prefix: str) -> str:
        """`prefix` + the X-Request-Id header, else + 32 hex digits (as vLLM)."""
        return f"{prefix}{self.request_id or uuid.uuid4().hex}"

    def thinking(self, requested: bool | None) -> bool:
        """Think first? The x-sim-reasoning header, then the request's own wish, then SimConfig.reasoning."""
        if self.reasoning_header is not None:
            return self.reasoning_header.strip().lower() in _TRUE
        return self.config.reasoning if requested is None else requested


class Writer(Protocol):
    """Renders one job's answer as a JSON body."""

    def body(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The non-stream response body."""


class StreamWriter(Writer, Protocol):
    """A writer that can also render the answer as the events of a stream."""

    def start(self) -> list[str]:
        """The events that open a stream (they go out with the first token)."""

    def delta(self, index: int, pieces: list[Piece], finished: bool) -> list[str]:
        """Events for new pieces of completion `index`; `finished`: they are its last ones."""

    def end(self, prompt_tokens: int, completion_tokens: int) -> list[str]:
        """The events that close a stream once every completion has finished."""

    def error(self, message: str, status: int) -> list[str]:
        """The events that end a stream with an error (an error after the stream started)."""


@dataclass
class Job:
    """One request's work for the engine: its completions and the writer that renders them."""
    completions: list[Completion]  # one engine sequence each
    writer: Writer  # a StreamWriter when `stream`
    stream: bool = False
    generates: bool = True  # False: pooling (embeddings): a sequence only prefills, then it is done
    shared_prompt: bool = False  # the completions are choices of one prompt (n): its tokens count once

    def prompt_tokens(self, index: int, completion: Completion) -> int:
        """Prompt tokens to count for completion `index`."""
        return 0 if self.shared_prompt and index else completion.prompt_tokens

    def length(self, completion: Completion) -> int:
        """How many tokens the engine produces for `completion` (pooling: the one output after prefill)."""
        return len(completion.pieces) if self.generates else 1

    def generated(self, produced: int) -> int:
        """Generation tokens to count for a sequence that produced `produced` tokens."""
        return produced if self.generates else 0
