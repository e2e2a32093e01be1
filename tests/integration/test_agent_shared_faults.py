"""Agent runs and sessions in Redis when things go wrong: a replica taken for dead while it still
writes, Redis losing a run's keys mid-run, replies lost on the way back, Redis unreachable while
runs finish. A real redis-server throughout; a small TCP proxy in front of it (``RedisProxy``) makes
it unreachable or loses its replies."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlparse

import redis.asyncio as aredis
from structlog.testing import capture_logs

from app.services.agent.shared_keys import entry_event, replica_key, run_keys
from tests.integration.test_agent_api import add_test_tools, names, parse_sse, run_sse
from tests.integration.test_agent_shared import STORY, assert_whole, started
from tests.support import gateway


class RedisProxy:
    """A TCP proxy to a redis-server, in the test's event loop. ``down()``: connections dropped and
    refused until ``up()``. ``swallow``: what Redis answers is dropped (its commands still run).
    ``cut_on``: the next request holding these bytes reaches Redis, but its connection is closed
    instead of the reply being passed on."""

    def __init__(self, redis_url: str) -> None:
        self.target = urlparse(redis_url).port
        self.is_down = False
        self.swallow = False
        self.cut_on: bytes | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task] = set()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> RedisProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"
        return self

    async def __aexit__(self, *exc) -> None:
        self.down()
        self._server.close()
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=2)

    def down(self) -> None:
        self.is_down = True
        for w in list(self._writers):
            w.close()

    def up(self) -> None:
        self.is_down = False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.is_down:
            writer.close()
            return
        handler = asyncio.current_task()
        self._handlers.add(handler)
        try:
            await self._pass(reader, writer)
        finally:
            self._handlers.discard(handler)

    async def _pass(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self._writers |= {writer, up_writer}
        cut = asyncio.Event()

        async def requests() -> None:
            while data := await reader.read(65536):
                if self.cut_on is not None and self.cut_on in data:
                    self.cut_on = None
                    cut.set()
                up_writer.write(data)
                await up_writer.drain()

        async def replies() -> None:
            while data := await up_reader.read(65536):
                if cut.is_set():
                    return
                if not self.swallow:
                    writer.write(data)
                    await writer.drain()

        tasks = [asyncio.ensure_future(requests()), asyncio.ensure_future(replies())]
        with contextlib.suppress(Exception):
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.close()


async def stream_of(r: aredis.Redis, run_id: str) -> list:
    events_key, _, _ = run_keys(run_id)
    return [entry_event(e) for e in await r.xrange(events_key)]


async def until(check, timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("not within the time")


async def forget_replica(r: aredis.Redis, replica: str) -> None:
    """Keep deleting ``replica``'s liveness key: as if it were slow to renew it."""
    while True:
        await r.delete(replica_key(replica))
        await asyncio.sleep(0.02)


async def follow_while_forgotten(a, b, r: aredis.Redis) -> tuple:
    """A runs a run that waits on its slow tool while its liveness key keeps vanishing; B follows it
    to its end. The run, what B's client got, and what A's own client got."""
    running = asyncio.create_task(a.client.post("/agent", json={"input": 'CALL slow {"tag": "x"}'}))
    run = await started(a.state.agent)
    await until(lambda: _has(r, run.run_id, 2))  # B can find the run (A writes its log a few ms after it starts)
    forgetting = asyncio.create_task(forget_replica(r, a.state.agent.shared.replica))
    followed = parse_sse((await b.client.get(f"/agent/runs/{run.run_id}/events")).text)
    forgetting.cancel()
    return run, followed, parse_sse((await running).text)


async def test_a_replica_slow_to_say_it_is_alive_is_not_taken_for_dead_while_its_run_goes(sim_url, redis_clean):
    """A's liveness key keeps vanishing (as if A were slow to renew it) while its run waits 2 s on a
    tool: B, which follows the run, does not end it with run_lost, as the log was written recently."""
    r = aredis.Redis.from_url(redis_clean)
    async with gateway(sim_url, redis_url=redis_clean) as a, gateway(sim_url, redis_url=redis_clean) as b:
        add_test_tools(a, slow_s=2.0)
        _, followed, whole = await follow_while_forgotten(a, b, r)
    await r.aclose()
    assert names(whole) == ["run", "tool_call", "tool_result", "final"]
    assert followed == whole  # not ended by a run_lost


async def test_a_log_sealed_by_a_follower_takes_no_more_events_from_its_writer(sim_url, redis_clean):
    """B takes A for dead at once (no silence required) while A's run waits on a tool: it ends A's log
    with run_lost. A's writer then writes nothing more to it (and says so); A's client sees the run end."""
    r = aredis.Redis.from_url(redis_clean)
    async with gateway(sim_url, redis_url=redis_clean) as a, gateway(sim_url, redis_url=redis_clean) as b:
        add_test_tools(a, slow_s=2.0)
        b.state.agent.shared.seal_silence_ms = 0
        b.state.agent.shared.hub.CHECK_S = 0.0
        with capture_logs() as logs:
            run, followed, whole = await follow_while_forgotten(a, b, r)
        stream = await stream_of(r, run.run_id)
        _, meta_key, _ = run_keys(run.run_id)
        meta = await r.hgetall(meta_key)
    await r.aclose()
    assert whole[-1]["event"] == "final"
    assert followed[-1]["event"] == "error" and followed[-1]["data"]["type"] == "run_lost"
    assert [(e.id, e.event, e.data) for e in stream] == [(e["id"], e["event"], e["data"]) for e in followed]
    assert_whole([e.id for e in stream])
    assert len(stream) < len(whole) and meta[b"finished"] == b"1"
    assert [e["run_id"] for e in logs if e["event"] == "agent_run_log_sealed"] == [run.run_id]


async def test_a_log_that_redis_lost_mid_run_is_written_again_whole(sim_slow_url, redis_clean):
    r = aredis.Redis.from_url(redis_clean)
    async with gateway(sim_slow_url, redis_url=redis_clean) as a:
        running = asyncio.create_task(a.client.post("/agent", json=STORY))
        run = await started(a.state.agent, events=3)
        await until(lambda: _has(r, run.run_id, 3))
        await r.flushall()
        whole = parse_sse((await running).text)
        stream = await stream_of(r, run.run_id)
        _, meta_key, _ = run_keys(run.run_id)
        finished = await r.hget(meta_key, "finished")
    await r.aclose()
    assert [(e.id, e.event, e.data) for e in stream] == [(e["id"], e["event"], e["data"]) for e in whole]
    assert finished == b"1"


async def _has(r: aredis.Redis, run_id: str, n: int) -> bool:
    return await r.xlen(run_keys(run_id)[0]) >= n


async def test_a_session_checkout_whose_reply_was_lost_leaves_no_lease(sim_url, redis_clean):
    """The lease was taken in Redis but its reply never came (a 503): the gateway gives it back in
    the background, so the session is not busy for the lease's 30 s."""
    async with RedisProxy(redis_clean) as proxy, \
            gateway(sim_url, redis_url=proxy.url, redis_timeout_s=0.3) as a:
        proxy.swallow = True
        lost = await a.client.post("/agent", json={"input": "hi", "tools": [], "session_id": "s"})
        proxy.swallow = False
        for _ in range(60):
            again = await a.client.post("/agent", json={"input": "hi", "tools": [], "session_id": "s"})
            if again.status_code != 409:
                break
            await asyncio.sleep(0.1)
    assert lost.status_code == 503 and lost.json()["error"]["type"] == "store_unavailable"
    assert again.status_code == 200, again.text


async def test_a_session_checkout_retried_after_a_dropped_connection_takes_its_own_lease(sim_url, redis_clean):
    """The lease was taken but the connection dropped before the reply: the client's retry (redis-py's
    asyncio Retry, once, on a new connection) finds the lease it took itself, not a busy session."""
    async with RedisProxy(redis_clean) as proxy, gateway(sim_url, redis_url=proxy.url) as a:
        proxy.cut_on = b"{t}:lease"
        first = await a.client.post("/agent", json={"input": "hi", "tools": [], "session_id": "t"})
        assert proxy.cut_on is None  # the cut happened
        second = await a.client.post("/agent", json={"input": "hi", "tools": [], "session_id": "t"})
    assert first.status_code == 200, first.text
    assert parse_sse(first.text)[-1]["event"] == "final"
    assert second.status_code == 200  # and the lease was given back


async def test_a_finished_run_dropped_while_redis_is_away_keeps_no_events_and_is_sealed_once_it_is_back(
        sim_slow_url, redis_clean):
    r = aredis.Redis.from_url(redis_clean)
    async with RedisProxy(redis_clean) as proxy, \
            gateway(sim_slow_url, redis_url=proxy.url, agent_max_retained_runs=1) as a:
        shared = a.state.agent.shared
        running = asyncio.create_task(a.client.post("/agent", json=STORY))
        run = await started(a.state.agent, events=3)
        await until(lambda: _has(r, run.run_id, 3))
        proxy.down()
        whole = parse_sse((await running).text)
        await run_sse(a.client, {"input": "hi", "tools": []})  # the store keeps one run: the first is dropped
        assert a.state.agent.runs.get(run.run_id) is None
        writer = shared._writers[run.run_id]
        kept = writer.run
        proxy.up()
        _, meta_key, _ = run_keys(run.run_id)
        await until(lambda: _finished(r, meta_key))
        stream = await stream_of(r, run.run_id)
        ttl = await r.pttl(meta_key)
    await r.aclose()
    assert whole[-1]["event"] == "final"
    assert kept is None  # the writer let go of the run and its events
    assert_whole([e.id for e in stream])
    assert [(e.id, e.data) for e in stream[:-1]] == [(e["id"], e["data"]) for e in whole[:len(stream) - 1]]
    assert stream[-1].event == "error" and stream[-1].data["type"] == "run_lost"
    assert 0 < ttl <= 300_000  # kept agent_resume_ttl_s, as a finished log


async def test_logs_waiting_to_be_sealed_are_bounded_in_number(sim_url, redis_clean):
    """Past MAX_SEALS, the oldest log waiting for Redis to be sealed is given up (and logged)."""
    async with RedisProxy(redis_clean) as proxy, \
            gateway(sim_url, redis_url=proxy.url, agent_max_retained_runs=1) as a:
        shared = a.state.agent.shared
        shared.MAX_SEALS = 1
        proxy.down()
        with capture_logs() as logs:
            runs = [(await run_sse(a.client, {"input": "hi", "tools": []}))[0]["data"]["run_id"] for _ in range(3)]
            await until(given_up(shared, runs[0]))  # its task, cancelled, ends
        sealing = set(shared._sealing)
        writers = set(shared._writers)
    assert sealing == {runs[1]}  # the first run's dropped for the second's, the newest is still kept
    assert runs[0] not in writers
    assert [e["run_id"] for e in logs if e["event"] == "agent_run_log_unsealed"] == [runs[0]]


def given_up(shared, run_id: str):
    async def check() -> bool:
        return run_id not in shared._writers
    return check


async def _finished(r: aredis.Redis, meta_key: str) -> bool:
    return await r.hget(meta_key, "finished") == b"1"


async def test_a_turn_whose_history_could_not_be_saved_says_so(sim_slow_url, redis_clean):
    async with RedisProxy(redis_clean) as proxy, gateway(sim_slow_url, redis_url=proxy.url) as a:
        running = asyncio.create_task(a.client.post("/agent", json={**STORY, "session_id": "s"}))
        await started(a.state.agent)
        proxy.down()
        unsaved = parse_sse((await running).text)[-1]
    assert unsaved["event"] == "final" and unsaved["data"]["session_saved"] is False
    assert unsaved["data"]["session_id"] == "s"
