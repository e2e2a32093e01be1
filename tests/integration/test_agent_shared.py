"""/agent across gateway replicas that share one Redis (VGATE_REDIS_URL): a run's event log is read
through any replica, sessions are continued on any replica and run on one at a time, and an
unreachable Redis leaves each replica its own runs (a 503 store_unavailable for the rest).

Two apps in one process are two replicas (each has its own runs and its own Redis client); the last
test runs two real `vgate serve` processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import httpx
import redis as redis_sync

from tests.integration.test_agent_api import names, parse_sse, read_events, run_sse
from tests.support import free_port, gateway, live_gateway, redis_server, spawn

KEY_ONE = "vg-" + "1" * 29
KEY_TWO = "vg-" + "2" * 29
KEYS = [{"id": "one", "key": KEY_ONE, "scopes": ["agent"]}, {"id": "two", "key": KEY_TWO, "scopes": ["agent"]}]
# About 60 tokens at the slow simulator's 50 ms a step: a run that lasts three seconds or so.
STORY = {"input": "write a long story", "tools": [], "config": {"max_tokens": 80, "min_tokens": 60}}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def assert_whole(ids: list[int]) -> None:
    assert ids == list(range(ids[0], ids[0] + len(ids))), ids  # each once, in order, no gap


async def started(agent, events: int = 2):
    """The run that ``agent`` has live, once it has published ``events`` events and, with Redis, written
    them to its shared log (another replica can find the run only then)."""
    for _ in range(500):
        live = agent.runs.live()
        if live and len(live[0].events) >= events:
            writer = agent.shared._writers.get(live[0].run_id) if agent.shared is not None else None
            if writer is None or writer.written >= events:
                return live[0]
        await asyncio.sleep(0.01)
    raise AssertionError("no run started")


def test_a_run_started_on_one_replica_is_resumed_on_another(sim_slow_url, redis_clean):
    """A client leaves replica A mid-run and comes back through B with Last-Event-ID: B has never
    seen the run, reads what it missed from Redis and follows it live to its final event. A keeps the
    run going past its disconnect grace because the client follows it through B."""

    async def scenario(a: str, b: str) -> tuple[str, list[dict], list[dict], float]:
        async with httpx.AsyncClient(timeout=30) as c:
            async with c.stream("POST", f"{a}/agent", json=STORY) as r:
                run_id = r.headers["x-vgate-run-id"]
                seen = await read_events(r, lambda events: len(events) >= 3)
            t0 = time.perf_counter()
            r2 = await c.get(f"{b}/agent/runs/{run_id}/events", headers={"Last-Event-ID": str(seen[-1]["id"])})
            assert r2.status_code == 200, r2.text
            assert any(line.startswith(":") for line in r2.text.splitlines())  # B's heartbeats
            return run_id, seen, parse_sse(r2.text), time.perf_counter() - t0

    grace = 0.3
    with live_gateway(sim_slow_url, redis_url=redis_clean, agent_disconnect_grace_s=grace) as (a, _), \
            live_gateway(sim_slow_url, redis_url=redis_clean, sse_heartbeat_s=0.5) as (b, b_app):
        run_id, seen, rest, followed_s = asyncio.run(scenario(a, b))
        assert b_app.state.agent.runs.get(run_id) is None  # B served it from Redis
    client = redis_sync.Redis.from_url(redis_clean)
    try:
        followers_ttl_ms = client.pttl(f"vg:run:{{{run_id}}}:followers")
    finally:
        client.close()
    assert followers_ttl_ms <= 5000  # B's presence ended with the run, not kept for an hour
    assert [e["id"] for e in seen] == [1, 2, 3]
    assert rest[0]["id"] == seen[-1]["id"] + 1
    assert_whole([e["id"] for e in seen + rest])
    assert rest[-1]["event"] == "final", rest[-1]  # not cancelled when the client left A
    assert rest[-1]["data"]["usage"]["completion_tokens"] >= 60
    assert followed_s > 3 * grace  # it was followed live, well past A's grace
    answer = "".join(e["data"]["text"] for e in seen + rest if e["event"] == "delta")
    assert answer == rest[-1]["data"]["answer"]


async def test_a_run_is_resumable_through_another_replica_only_by_its_key(sim_url, redis_clean):
    async with gateway(sim_url, redis_url=redis_clean, api_keys=KEYS) as a, \
            gateway(sim_url, redis_url=redis_clean, api_keys=KEYS) as b:
        whole = await run_sse(a.client, {"input": 'CALL calculator {"expression": "6*7"}'}, headers=bearer(KEY_ONE))
        run_id = whole[0]["data"]["run_id"]
        own = await b.client.get(f"/agent/runs/{run_id}/events", headers={**bearer(KEY_ONE), "Last-Event-ID": "1"})
        other = await b.client.get(f"/agent/runs/{run_id}/events", headers=bearer(KEY_TWO))
        other_local = await a.client.get(f"/agent/runs/{run_id}/events", headers=bearer(KEY_TWO))
        unknown = await b.client.get("/agent/runs/run_nope/events", headers=bearer(KEY_ONE))
    assert names(whole) == ["run", "tool_call", "tool_result", "final"]
    assert own.status_code == 200 and parse_sse(own.text) == whole[1:]  # the same events, ids and data
    for r in (other, unknown):
        assert r.status_code == 404 and r.json()["error"]["type"] == "run_not_found"
    assert other.json()["error"]["message"] == other_local.json()["error"]["message"]  # as the local answer


async def test_a_sessions_next_turn_on_another_replica_sees_its_history(sim_url, redis_clean):
    """The simulator follows `ALWAYS CALL` lines of a conversation's first user message, which only
    the kept history can show it on B."""
    turn = {"session_id": "s1", "tools": ["calculator"], "max_steps": 1}
    async with gateway(sim_url, redis_url=redis_clean) as a, gateway(sim_url, redis_url=redis_clean) as b:
        first = await run_sse(a.client, {**turn, "input": 'ALWAYS CALL calculator {"expression": "3*3"}'})
        second = await run_sse(b.client, {**turn, "input": "and now?"})
        alone = await run_sse(b.client, {**turn, "input": "and now?", "session_id": "s2"})
        third = await run_sse(a.client, {**turn, "input": "and then?"})
    assert names(first) == names(second) == names(third) == ["run", "tool_call", "tool_result", "final"]
    assert names(alone) == ["run", "final"]
    assert not any("session_saved" in t[-1]["data"] for t in (first, second, alone, third))  # each turn kept
    usage = [t[-1]["data"]["usage"]["prompt_tokens"] for t in (alone, second, third)]
    assert usage[0] < usage[1] < usage[2]  # each turn sees all the turns before it, wherever they ran


async def test_a_session_busy_on_one_replica_is_409_on_another(sim_slow_url, redis_clean):
    async with gateway(sim_slow_url, redis_url=redis_clean) as a, gateway(sim_slow_url, redis_url=redis_clean) as b:
        running = asyncio.create_task(a.client.post("/agent", json={**STORY, "session_id": "busy"}))
        await started(a.state.agent)
        busy = await b.client.post("/agent", json={"input": "hi", "tools": [], "session_id": "busy"})
        other = await b.client.post("/agent", json={"input": "hi", "tools": [], "session_id": "free"})
        first = await running
        after = await b.client.post("/agent", json={"input": "hi", "tools": [], "session_id": "busy"})
    assert busy.status_code == 409 and busy.json()["error"]["type"] == "session_busy"
    assert other.status_code == 200
    assert parse_sse(first.text)[-1]["event"] == "final"
    assert after.status_code == 200 and parse_sse(after.text)[-1]["event"] == "final"  # the lease is free


async def test_with_redis_gone_runs_go_on_locally_and_the_rest_is_a_quick_503(sim_slow_url):
    """Redis stops mid-run: the run still ends on its replica and is resumable there; another
    replica cannot find it (503 store_unavailable, at once), nor run a session. Each failure is
    counted, the outage logged once."""
    from structlog.testing import capture_logs

    with contextlib.ExitStack() as stack:
        url = stack.enter_context(redis_server())
        async with gateway(sim_slow_url, redis_url=url) as a, gateway(sim_slow_url, redis_url=url) as b:
            with capture_logs() as logs:
                running = asyncio.create_task(a.client.post("/agent", json=STORY))
                await started(a.state.agent)
                stack.close()  # redis-server stopped
                whole = parse_sse((await running).text)
                run_id = whole[0]["data"]["run_id"]
                local = await a.client.get(f"/agent/runs/{run_id}/events", headers={"Last-Event-ID": "2"})
                t0 = time.perf_counter()
                elsewhere = await b.client.get(f"/agent/runs/{run_id}/events", headers={"Last-Event-ID": "2"})
                resume_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                session = await a.client.post("/agent", json={"input": "hi", "tools": [], "session_id": "s"})
                session_s = time.perf_counter() - t0
                plain = await a.client.post("/agent", json={"input": "hi", "tools": []})
                await asyncio.sleep(0.5)  # the writers try again
            log_errors = a.metric("vgate_store_errors_total", op="agent_run_log")
            store_up = a.metric("vgate_store_up")
    assert whole[-1]["event"] == "final"
    assert_whole([e["id"] for e in whole])
    assert local.status_code == 200 and parse_sse(local.text) == whole[2:]
    for r in (elsewhere, session):
        assert r.status_code == 503 and r.json()["error"]["type"] == "store_unavailable", r.text
        assert r.headers["retry-after"] == "1"
    assert resume_s < 3 and session_s < 3
    assert plain.status_code == 200 and parse_sse(plain.text)[-1]["event"] == "final"  # no session: no Redis
    assert log_errors >= 2 and store_up == 0
    assert [e["event"] for e in logs].count("store_unreachable") == 2  # once by each replica


async def test_a_run_whose_replica_is_gone_ends_with_run_lost(sim_url, redis_clean):
    """A log left live by a replica that died (no liveness key): its follower ends it, once, with a
    retryable error event after its last one; later readers find the same log, finished."""
    client = redis_sync.Redis.from_url(redis_clean)
    try:
        client.xadd("vg:run:{run_dead}:events", {"event": "run", "data": '{"run_id": "run_dead"}'}, id="0-1")
        client.xadd("vg:run:{run_dead}:events", {"event": "delta", "data": '{"text": "Once", "step": 1}'}, id="0-2")
        client.hset("vg:run:{run_dead}:meta", mapping={"owner": "", "replica": "gone:1:x", "session_id": "",
                                                        "model": "m", "finished": 0})
        async with gateway(sim_url, redis_url=redis_clean) as b:
            first = parse_sse((await b.client.get("/agent/runs/run_dead/events")).text)
            again = parse_sse((await b.client.get("/agent/runs/run_dead/events", headers={"Last-Event-ID": "1"})).text)
        finished = client.hget("vg:run:{run_dead}:meta", "finished")
    finally:
        client.close()
    assert [(e["id"], e["event"]) for e in first] == [(1, "run"), (2, "delta"), (3, "error")]
    assert first[-1]["data"]["type"] == "run_lost" and first[-1]["data"]["retryable"] is True
    assert again == first[1:] and finished == b"1"


def test_two_gateway_processes_share_a_run(sim_slow_url, redis_clean):
    """Two `vgate serve` processes: a run started on one is resumed on the other, mid-run, with each
    event after Last-Event-ID once, through the final one."""

    async def scenario(a: str, b: str) -> tuple[list[dict], list[dict]]:
        async with httpx.AsyncClient(timeout=30) as c:
            async with c.stream("POST", f"{a}/agent", json=STORY) as r:
                run_id = r.headers["x-vgate-run-id"]
                seen = await read_events(r, lambda events: len(events) >= 4)
            r2 = await c.get(f"{b}/agent/runs/{run_id}/events", headers={"Last-Event-ID": str(seen[-1]["id"])})
            assert r2.status_code == 200, r2.text
            return seen, parse_sse(r2.text)

    env = {"VGATE_REDIS_URL": redis_clean, "VGATE_AGENT_DISCONNECT_GRACE_S": "0.3", "VGATE_LOG_LEVEL": "WARNING"}
    pa, pb = free_port(), free_port()
    with spawn(["serve", "--upstream", sim_slow_url, "--port", str(pa)], pa, env=env) as a, \
            spawn(["serve", "--upstream", sim_slow_url, "--port", str(pb)], pb, env=env) as b:
        seen, rest = asyncio.run(scenario(a, b))
    assert rest[0]["id"] == seen[-1]["id"] + 1
    assert_whole([e["id"] for e in seen + rest])
    assert rest[-1]["event"] == "final" and rest[-1]["data"]["usage"]["completion_tokens"] >= 60
    client = redis_sync.Redis.from_url(redis_clean)
    try:
        run_id = rest[-1]["data"]["run_id"]
        meta = client.hgetall(f"vg:run:{{{run_id}}}:meta")
        ttl = client.ttl(f"vg:run:{{{run_id}}}:events")
    finally:
        client.close()
    assert meta[b"finished"] == b"1" and 0 < ttl <= 300  # kept agent_resume_ttl_s once finished


async def test_last_event_id_is_checked_before_the_run_and_alike_on_every_replica(sim_url, redis_clean):
    """Only ASCII digits, 0 to 2**53, are an event id: anything else is a 422 naming the header, even
    for an unknown run (it is checked first), on the run's replica (local) as on another (Redis). An
    id past the last event of a finished run is a 422 too; the last event's own id is an empty 200."""
    bad = ["-1", "+3", "1_0", "1.0", "0x10", "3a", "²".encode(), "٣".encode(), str(2**53 + 1), "9" * 40]
    async with gateway(sim_url, redis_url=redis_clean) as a, gateway(sim_url, redis_url=redis_clean) as b:
        whole = await run_sse(a.client, {"input": "hi", "tools": []})
        run_id, last = whole[0]["data"]["run_id"], whole[-1]["id"]
        for replica in (a, b):
            for value in [*bad, str(last + 1), str(2**53)]:
                for path in (f"/agent/runs/{run_id}/events", "/agent/runs/run_nope/events"):
                    r = await replica.client.get(path, headers={"Last-Event-ID": value})
                    if path.endswith("run_nope/events") and value in (str(last + 1), str(2**53)):
                        assert r.status_code == 404, (value, r.text)  # a well-formed id: the run is looked up
                        continue
                    assert r.status_code == 422, (value, path, r.text)
                    error = r.json()["error"]
                    assert error["type"] == "invalid_request" and "Last-Event-ID" in error["message"], error
            at_end = await replica.client.get(f"/agent/runs/{run_id}/events", headers={"Last-Event-ID": str(last)})
            leading_zero = await replica.client.get(f"/agent/runs/{run_id}/events", headers={"Last-Event-ID": "01"})
            assert at_end.status_code == 200 and parse_sse(at_end.text) == []
            assert parse_sse(leading_zero.text) == whole[1:]


def test_a_follower_leaving_another_replica_keeps_the_run_for_the_disconnect_grace(sim_slow_url, redis_clean):
    """A client follows A's run through B and goes away mid-run: B keeps it present in the run's
    followers for the disconnect grace (as A would for its own client), not for the few seconds
    its presence had left."""
    grace = 30

    async def scenario(a: str, b: str) -> float:
        async with httpx.AsyncClient(timeout=30) as c:
            async with c.stream("POST", f"{a}/agent", json=STORY) as r:
                run_id = r.headers["x-vgate-run-id"]
                await read_events(r, lambda events: len(events) >= 2)
            async with c.stream("GET", f"{b}/agent/runs/{run_id}/events", headers={"Last-Event-ID": "2"}) as r:
                await read_events(r, lambda events: len(events) >= 2)
        await asyncio.sleep(0.5)  # B has seen its client go
        client = redis_sync.Redis.from_url(redis_clean)
        try:
            scores = client.zrange(f"vg:run:{{{run_id}}}:followers", 0, -1, withscores=True)
            seconds, micros = client.time()
        finally:
            client.close()
        return max(score for _, score in scores) - (seconds * 1000 + micros // 1000)

    with live_gateway(sim_slow_url, redis_url=redis_clean, agent_disconnect_grace_s=grace) as (a, _), \
            live_gateway(sim_slow_url, redis_url=redis_clean, agent_disconnect_grace_s=grace) as (b, _):
        left_ms = asyncio.run(scenario(a, b))
    assert left_ms > (grace - 5) * 1000


def test_a_follower_counts_as_a_client_of_the_run_while_it_replays_a_long_log(sim_url, redis_clean):
    """A live run of another replica with a log of some 24 MB, and a client that reads little of
    it: while B is still replaying, held up by the client, the run has B among its followers."""
    client = redis_sync.Redis.from_url(redis_clean)
    events, meta, followers = "vg:run:{run_long}:events", "vg:run:{run_long}:meta", "vg:run:{run_long}:followers"
    pipe = client.pipeline(transaction=False)
    for i in range(1, 3001):
        pipe.xadd(events, {"event": "delta", "data": json.dumps({"text": "x" * 8000, "step": 1})}, id=f"0-{i}")
    pipe.hset(meta, mapping={"owner": "", "replica": "busy:1:x", "session_id": "", "model": "m", "finished": 0})
    pipe.set("vg:replica:busy:1:x", 1, px=60_000)
    pipe.execute()

    async def scenario(b: str) -> int:
        async with httpx.AsyncClient(timeout=30) as c:
            async with c.stream("GET", f"{b}/agent/runs/run_long/events") as r:
                chunks = r.aiter_bytes()  # held: a generator collected would close the response
                await anext(chunks)
                await asyncio.sleep(4.5)  # twice the presence, and more
                seconds, micros = client.time()
                return client.zcount(followers, f"({seconds * 1000 + micros // 1000}", "+inf")

    try:
        with live_gateway(sim_url, redis_url=redis_clean) as (b, b_app):
            b_app.state.agent.shared.follower_ttl_s = 2.0
            present = asyncio.run(scenario(b))
    finally:
        client.close()
    assert present == 1


async def test_many_followers_through_another_replica_share_one_blocking_read(sim_slow_url, redis_clean):
    """300 clients follow A's run through B: far more than B's pool of Redis connections (64), which
    a blocking read each would exhaust. Each gets the whole rest of the log."""
    async with gateway(sim_slow_url, redis_url=redis_clean) as a, gateway(sim_slow_url, redis_url=redis_clean) as b:
        running = asyncio.create_task(a.client.post("/agent", json=STORY))
        run = await started(a.state.agent)
        followed = await asyncio.gather(*(b.client.get(f"/agent/runs/{run.run_id}/events",
                                                      headers={"Last-Event-ID": "1"}) for _ in range(300)))
        whole = parse_sse((await running).text)
    assert whole[-1]["event"] == "final"
    for r in followed:
        assert r.status_code == 200 and parse_sse(r.text) == whole[1:]


async def test_sessions_in_redis_are_bounded_by_agent_max_sessions(sim_url, redis_clean):
    """As in memory: past agent_max_sessions the least recently used session is dropped."""
    client = redis_sync.Redis.from_url(redis_clean)
    try:
        async with gateway(sim_url, redis_url=redis_clean, agent_max_sessions=2) as a:
            for sid in ("s1", "s2", "s3", "s2", "s4"):
                await run_sse(a.client, {"input": "hi", "tools": [], "session_id": sid})
        kept = {sid for sid in ("s1", "s2", "s3", "s4") if client.exists(f"vg:session:{{{sid}}}:history")}
    finally:
        client.close()
    assert kept == {"s2", "s4"}
