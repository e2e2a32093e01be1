"""The simulator's ASGI app: plain ASGI with a dict of routes, no framework on the hot path.

Routes: POST /v1/chat/completions, /v1/completions, /v1/responses, /v1/embeddings,
GET /v1/models, GET /health, GET /ping, GET /version, GET /metrics,
POST /reset_prefix_cache (as vLLM), and the simulator's own GET /sim/stats and POST /sim/reset.

The four model endpoints run the same way (`_serve`): the endpoint's module parses the request
into a job (job.py), then faults, the engine, the disconnect watch and the counters are common.
Request headers read on them:
    X-Request-Id     the response id becomes `chatcmpl-<X-Request-Id>` (`cmpl-`, `resp_`, `embd-`);
                     retries share it (fault `times`)
    x-sim-fault      a fault spec (faults.py), replacing SimConfig.fault for this request
    x-sim-reasoning  1/0: think first or not (beats chat_template_kwargs.enable_thinking,
                     which beats SimConfig.reasoning)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, cast

from prometheus_client import CONTENT_TYPE_LATEST

from app.sim.chat import chat_job
from app.sim.completions import completions_job
from app.sim.config import SimConfig
from app.sim.embeddings import embeddings_job
from app.sim.engine import Engine, Sequence
from app.sim.faults import FaultInjector, FaultSpec, SimulatedDrop, hide_simulated_drops
from app.sim.job import Call, Job, StreamWriter
from app.sim.metrics import SimStats
from app.sim.protocol import RequestError, error_body
from app.sim.responses import responses_job

__all__ = ["SimApp", "SimConfig", "create_sim_app"]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
_KEEPALIVE = ": keep-alive\n\n"


class ClientGone(Exception):
    """The client disconnected before the request body arrived."""


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGone
    body = message.get("body", b"")
    if not message.get("more_body"):
        return body
    parts = [body]
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        parts.append(message.get("body", b""))
    return b"".join(parts)


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _until_disconnect(work: Coroutine[Any, Any, None], receive: Receive) -> bool:
    """Run `work` unless the client leaves first; False (and `work` cancelled) if it left."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        gone.cancel()
        raise
    if task.done():
        gone.cancel()
        task.result()  # re-raise SimulatedDrop and real errors
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = _JSON) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class SimApp:
    """A simulated vLLM 0.33 OpenAI-compatible server (an ASGI app)."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.engine = Engine(self.config)
        self.stats = SimStats(self.engine, self.config.model)
        self.faults = FaultInjector(self.config.fault, self.config.seed)
        self.started = int(time.time())
        self._models_body = json.dumps({"object": "list", "data": [{
            "id": self.config.model, "object": "model", "created": self.started, "owned_by": "vllm",
            "root": self.config.model_root or self.config.model, "parent": None,
            "max_model_len": self.config.max_model_len,
            "permission": [{"id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission",
                            "created": self.started, "allow_create_engine": False, "allow_sampling": True,
                            "allow_logprobs": True, "allow_search_indices": False, "allow_view": True,
                            "allow_fine_tuning": False, "organization": "*", "group": None,
                            "is_blocking": False}],
        }]}).encode()
        self._routes: dict[tuple[str, str], Callable[[Scope, Receive, Send], Awaitable[None]]] = {
            ("POST", "/v1/chat/completions"): functools.partial(self._serve, chat_job),
            ("POST", "/v1/completions"): functools.partial(self._serve, completions_job),
            ("POST", "/v1/responses"): functools.partial(self._serve, responses_job),
            ("POST", "/v1/embeddings"): functools.partial(self._serve, embeddings_job),
            ("GET", "/v1/models"): self._models,
            ("GET", "/health"): self._health,
            ("GET", "/ping"): self._health,
            ("GET", "/version"): self._version,
            ("GET", "/metrics"): self._metrics,
            ("GET", "/sim/stats"): self._sim_stats,
            ("POST", "/sim/reset"): self._sim_reset,
            ("POST", "/reset_prefix_cache"): self._reset_prefix_cache,
        }
        self._paths = {path for _, path in self._routes}
        hide_simulated_drops()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handler = self._routes.get((scope["method"], scope["path"]))
            if handler is not None:
                await handler(scope, receive, send)
            elif scope["path"] in self._paths:
                await _send(send, 405, b'{"detail":"Method Not Allowed"}')
            else:
                await _send(send, 404, b'{"detail":"Not Found"}')
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.engine.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # --- small endpoints ------------------------------------------------------------------

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _send(send, 200, self._models_body)

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _send(send, 200, b"", [])

    async def _version(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _send(send, 200, json.dumps({"version": self.config.version}).encode())

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _send(send, 200, self.stats.render(), [(b"content-type", CONTENT_TYPE_LATEST.encode())])

    async def _sim_stats(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _send(send, 200, json.dumps(self.stats.snapshot()).encode())

    async def _sim_reset(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.stats.reset()
        self.faults.reset()
        await _send(send, 200, json.dumps(self.stats.snapshot()).encode())

    async def _reset_prefix_cache(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.engine.prefix_cache.clear()
        await _send(send, 200, b"", [])

    # --- the endpoints that run the model ----------------------------------------------------

    async def _serve(self, build: Callable[[Call], Job], scope: Scope, receive: Receive, send: Send) -> None:
        """Run one request of any model endpoint: `build` parses it into a job (endpoint-specific)."""
        self.stats.requests_total += 1
        try:
            raw = await _read_body(receive)
        except ClientGone:
            self.stats.requests_aborted += 1
            return
        call = Call(raw, self.config)
        fault_header = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                call.request_id = value.decode("latin-1")
            elif key == b"x-sim-fault":
                fault_header = value.decode("latin-1")
            elif key == b"x-sim-reasoning":
                call.reasoning_header = value
        try:
            job = build(call)
            try:
                fault = self.faults.pick(fault_header, call.request_id, raw)
            except ValueError as exc:
                raise RequestError(f"Bad x-sim-fault header: {exc}") from None
            if fault is not None and fault.bad_output is not None:
                call.fault = fault
                job = build(call)  # again, now writing what the fault makes of it
        except RequestError as exc:
            await _send(send, exc.status, error_body(exc.message, exc.status, exc.param))
            return

        if fault is not None:
            self.stats.fault(fault.kind)
            if fault.status is not None or (fault.stream_error is not None and not job.stream):
                await self._send_fault_status(send, fault)
                return
            if fault.hang:
                await _wait_disconnect(receive)
                self.stats.requests_aborted += 1
                return

        seqs = [Sequence(c.prompt_tokens, c.prompt_blocks, job.length(c)) for c in job.completions]
        for seq in seqs:
            self.engine.submit(seq)
        respond = self._stream if job.stream else self._respond
        work = respond(send, job, seqs, fault)
        try:
            if all(s.produced == s.total for s in seqs) and (fault is None or not fault.slow_first_token_ms):
                await work  # zero-latency: nothing to wait for, so no disconnect watch
            elif not await _until_disconnect(work, receive):
                self.stats.requests_aborted += 1
                for i, (c, seq) in enumerate(zip(job.completions, seqs, strict=True)):
                    self.stats.finished("abort", job.prompt_tokens(i, c) if seq.produced else 0,
                                        job.generated(seq.produced))
        finally:
            for seq in seqs:
                self.engine.release(seq)

    def _finished(self, job: Job, seqs: list[Sequence]) -> None:
        for i, (c, seq) in enumerate(zip(job.completions, seqs, strict=True)):
            self.stats.finished(c.finish_reason, job.prompt_tokens(i, c), job.generated(seq.total))

    def _usage(self, job: Job, seqs: list[Sequence]) -> tuple[int, int]:
        return (sum(job.prompt_tokens(i, c) for i, c in enumerate(job.completions)),
                sum(job.generated(s.total) for s in seqs))

    async def _send_fault_status(self, send: Send, fault: FaultSpec) -> None:
        status = fault.status or 500
        headers = list(_JSON)
        if fault.retry_after is not None:
            headers.append((b"retry-after", f"{fault.retry_after:g}".encode()))
        await _send(send, status, error_body(f"Simulated fault: HTTP {status}", status), headers)

    async def _first_token(self, seq: Sequence, fault: FaultSpec | None) -> None:
        if seq.produced == 0:
            await seq.wait_beyond(0)
        if fault is not None and fault.slow_first_token_ms:
            await asyncio.sleep(fault.slow_first_token_ms / 1000.0)

    async def _respond(self, send: Send, job: Job, seqs: list[Sequence], fault: FaultSpec | None) -> None:
        await self._first_token(seqs[0], fault)
        for seq in seqs:
            if seq.produced < seq.total:
                await seq.wait_beyond(seq.total - 1)
        body = job.writer.body(*self._usage(job, seqs))
        if fault is not None and fault.malformed:
            body = body[: len(body) // 2]
        elif fault is not None and fault.drop_after_chunks is not None:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [*_JSON, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
            raise SimulatedDrop
        await _send(send, 200, body)
        self._finished(job, seqs)

    async def _stream(self, send: Send, job: Job, seqs: list[Sequence], fault: FaultSpec | None) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        writer = cast(StreamWriter, job.writer)
        await self._first_token(seqs[0], fault)
        events = writer.start()
        emitted = 0  # events written (counted only for faults)
        sent = [-1] * len(seqs)  # pieces rendered, per completion (-1: none, not even an empty finish)
        while True:
            for i, (completion, seq) in enumerate(zip(job.completions, seqs, strict=True)):
                produced = seq.produced
                if produced > sent[i] and (produced > 0 or seq.total == 0):
                    events.extend(writer.delta(i, completion.pieces[max(sent[i], 0):produced], produced == seq.total))
                    sent[i] = produced
            waiting = next((i for i, seq in enumerate(seqs) if sent[i] < seq.total), None)
            outcome = "more" if waiting is not None else "done"
            if outcome == "done":
                events.extend(writer.end(*self._usage(job, seqs)))
            if fault is not None:
                events, outcome = _inject(events, emitted, fault, outcome, writer)
                emitted += len(events)
                if fault.keepalive:
                    events = [part for event in events for part in (_KEEPALIVE, event)]
            body = "".join(events).encode()
            await send({"type": "http.response.body", "body": body, "more_body": outcome in ("more", "drop")})
            if outcome == "drop":
                raise SimulatedDrop("simulated connection drop")
            if outcome != "more":
                break
            events = []
            assert waiting is not None
            await seqs[waiting].wait_beyond(max(sent[waiting], 0))
        if outcome == "done":
            self._finished(job, seqs)


def _inject(events: list[str], emitted: int, fault: FaultSpec, outcome: str,
            writer: StreamWriter) -> tuple[list[str], str]:
    """Apply a stream fault to the next batch of events, `emitted` having been written before.

    Returns the events to write and what follows them: "more" events, "done" (the stream is complete),
    "error" (it ended with an error event) or "drop" (cut the connection).
    """
    if fault.malformed and emitted <= 1 < emitted + len(events):
        i = 1 - emitted
        events[i] = events[i][: len(events[i]) // 2] + "\n\n"
    if fault.stream_error is not None and emitted + len(events) > fault.stream_error:
        error = writer.error("Simulated fault: error after the stream started", 500)
        return [*events[: fault.stream_error - emitted], *error], "error"
    if fault.drop_after_chunks is not None and emitted + len(events) >= fault.drop_after_chunks:
        return events[: fault.drop_after_chunks - emitted], "drop"
    return events, outcome


def create_sim_app(config: SimConfig | None = None) -> SimApp:
    """The simulator as an ASGI app (its engine task starts with the first request)."""
    return SimApp(config)
