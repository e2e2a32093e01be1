"""Jobs in Redis: a job run on gateway A is read, followed and cancelled through gateway B; a
replica that vanishes leaves its jobs ``job_lost``, not running forever; Redis unreachable is a
503, and a job that finishes meanwhile writes its last state once Redis is back. A real
redis-server throughout (behind ``RedisProxy`` where it goes away)."""

from __future__ import annotations

import asyncio

import redis.asyncio as aredis

from app.services.jobs.redis_store import job_keys
from tests.integration.test_agent_shared_faults import RedisProxy
from tests.integration.test_jobs import ADMIN, KEY, KEYS, OTHER, Gated, bearer, parse_sse, wait_status
from tests.support import gateway


async def follow(gw, job_id: str, after: int = 0) -> list:
    """The job's events as ``gw`` streams them (found in Redis: no caller here to check it against)."""
    job = await gw.state.jobs.shared.find(job_id)
    return [(ev.id, ev.event, ev.data) async for ev in gw.state.jobs.follow(job, after)]


async def eventually(gw, job_id: str, status: str, timeout: float = 10) -> dict:
    """The job's view once it has ``status``, through answers that are not there yet (404: Redis lost
    its keys and its replica has not written them again; 503: Redis is unreachable)."""
    async with asyncio.timeout(timeout):
        while (seen := await gw.client.get(f"/jobs/{job_id}")).status_code != 200 or seen.json()["status"] != status:
            assert seen.status_code in (200, 404, 503), seen.text
            await asyncio.sleep(0.05)
    return seen.json()


async def test_a_job_of_one_replica_is_read_and_followed_through_another(sim_url, redis_clean):
    async with gateway(sim_url, redis_url=redis_clean, api_keys=KEYS) as a, \
            gateway(sim_url, redis_url=redis_clean, api_keys=KEYS) as b:
        work = Gated(steps=3, result={"score": 0.75})
        job_id = await a.state.jobs.submit("evaluate", work, total=3, owner="app")
        await work.started.wait()
        running = await wait_status(b, job_id, "running", headers=bearer(KEY))  # at once: written before it starts
        assert running["kind"] == "evaluate" and running["progress"] == {"done": 0, "total": 3}
        live = asyncio.ensure_future(follow(b, job_id))  # B follows it live from Redis
        for _ in range(3):
            work.release()
            await asyncio.sleep(0.3)
        got = await asyncio.wait_for(live, 10)
        done = await wait_status(b, job_id, "succeeded", headers=bearer(KEY))
        sse = await b.client.get(f"/jobs/{job_id}/events", headers=bearer(KEY))
        resumed = await b.client.get(f"/jobs/{job_id}/events", headers={**bearer(KEY), "last-event-id": "2"})
        admin = await b.client.get(f"/jobs/{job_id}", headers=bearer(ADMIN))
        other = await b.client.get(f"/jobs/{job_id}", headers=bearer(OTHER))
        on_a = (await a.client.get(f"/jobs/{job_id}", headers=bearer(KEY))).json()
    assert [e[1] for e in got] == ["progress", "progress", "progress", "result"]
    assert [e[0] for e in got] == [1, 2, 3, 4] and got[-1][2] == {"score": 0.75}
    assert done["result"] == {"score": 0.75} and done["progress"]["done"] == 3 and done["finished_at"]
    assert done == on_a  # the same job through either replica
    events = parse_sse(sse.text)
    assert [(e["id"], e["event"], e["data"]) for e in events] == got
    assert parse_sse(resumed.text) == events[2:]
    assert admin.status_code == 200
    assert other.status_code == 404 and other.json()["error"]["type"] == "job_not_found"


async def test_delete_through_another_replica_cancels_the_work_where_it_runs(sim_url, redis_clean):
    async with gateway(sim_url, redis_url=redis_clean) as a, gateway(sim_url, redis_url=redis_clean) as b:
        work = Gated(steps=3)
        job_id = await a.state.jobs.submit("optimize", work, total=3, owner=None)
        await wait_status(b, job_id, "running")
        r = await b.client.delete(f"/jobs/{job_id}")
        cancelled = await wait_status(b, job_id, "cancelled")
    assert r.status_code == 202 and r.json()["status"] == "running"
    assert work.cancelled and cancelled["error"]["type"] == "job_cancelled"


async def test_a_job_whose_replica_vanished_is_lost_not_running_forever(sim_url, redis_clean):
    r = aredis.Redis.from_url(redis_clean)
    async with gateway(sim_url, redis_url=redis_clean) as a, gateway(sim_url, redis_url=redis_clean) as b:
        work = Gated(steps=3)
        job_id = await a.state.jobs.submit("evaluate", work, total=3, owner=None)
        await work.started.wait()
        work.release()
        await wait_status(b, job_id, "running")
        await asyncio.sleep(0.3)
        shared = a.state.jobs.shared
        live = asyncio.ensure_future(follow(b, job_id))
        await asyncio.sleep(0.2)
        shared._alive.cancel()  # A stops renewing the job's liveness, as a replica that died would ...
        await r.hset(job_keys(job_id)[0], "alive_at", 0)  # ... ALIVE_TTL_S ago
        got = await asyncio.wait_for(live, 10)
        lost = (await b.client.get(f"/jobs/{job_id}")).json()
        work.release()  # A, only slow after all, goes on: its next write is refused, and its work cancelled
        async with asyncio.timeout(5):
            while not work.cancelled:
                await asyncio.sleep(0.02)
        after = (await b.client.get(f"/jobs/{job_id}")).json()
        stream = await r.xrange(job_keys(job_id)[1])
    await r.aclose()
    assert got[-1][1] == "error" and got[-1][2]["type"] == "job_lost"
    assert [e[0] for e in got] == list(range(1, len(got) + 1))
    assert lost["status"] == "failed" and lost["error"]["type"] == "job_lost" and lost["finished_at"]
    assert after == lost and len(stream) == len(got)  # nothing written past its end


async def test_shutdown_cancels_the_jobs_and_other_replicas_see_it(sim_url, redis_clean):
    async with gateway(sim_url, redis_url=redis_clean) as b:
        async with gateway(sim_url, redis_url=redis_clean) as a:
            work = Gated(steps=3)
            job_id = await a.state.jobs.submit("evaluate", work, total=3, owner=None)
            await work.started.wait()
        view = await wait_status(b, job_id, "cancelled")
        events = parse_sse((await b.client.get(f"/jobs/{job_id}/events")).text)
    assert work.cancelled and view["error"]["type"] == "shutting_down"
    assert events[-1]["event"] == "error" and events[-1]["data"]["type"] == "shutting_down"


async def test_redis_down_is_a_503_and_a_job_that_finished_meanwhile_is_written_when_it_is_back(
        sim_url, redis_clean):
    async with RedisProxy(redis_clean) as proxy:
        async with gateway(sim_url, redis_url=proxy.url) as a, gateway(sim_url, redis_url=proxy.url) as b:
            work = Gated(steps=2, result={"score": 1.0})
            job_id = await a.state.jobs.submit("evaluate", work, total=2, owner=None)
            await work.started.wait()
            proxy.down()
            work.release(2)  # the job goes on, and finishes, while Redis is away
            on_a = await wait_status(a, job_id, "succeeded")  # A has it in memory
            down = await b.client.get(f"/jobs/{job_id}")
            unknown = await b.client.get("/jobs/job_" + "0" * 32)
            submit = None
            try:
                await a.state.jobs.submit("evaluate", Gated(), total=1, owner=None)
            except Exception as exc:  # noqa: BLE001 - the error the route would answer
                submit = exc
            proxy.up()
            back = await eventually(b, job_id, "succeeded")  # B answers 503 until it tries Redis again
            events = parse_sse((await b.client.get(f"/jobs/{job_id}/events")).text)
    assert down.status_code == 503 and down.json()["error"]["type"] == "store_unavailable"
    assert unknown.status_code == 503
    assert getattr(submit, "type", None) == "store_unavailable"
    assert back == on_a and events[-1]["data"] == {"score": 1.0}
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))


async def test_a_job_whose_keys_redis_lost_is_written_again_whole(sim_url, redis_clean):
    r = aredis.Redis.from_url(redis_clean)
    async with gateway(sim_url, redis_url=redis_clean) as a, gateway(sim_url, redis_url=redis_clean) as b:
        work = Gated(steps=3, result={})
        job_id = await a.state.jobs.submit("evaluate", work, total=3, owner=None)
        await work.started.wait()
        work.release()
        await asyncio.sleep(0.3)
        await wait_status(b, job_id, "running")
        await r.flushall()  # a restart without persistence, an eviction
        rewritten = await eventually(b, job_id, "running")  # its replica writes it again within a second
        work.release(2)
        done = await eventually(b, job_id, "succeeded")
        events = parse_sse((await b.client.get(f"/jobs/{job_id}/events")).text)
    await r.aclose()
    assert rewritten["progress"]["done"] == 1
    assert done["result"] == {} and done["kind"] == "evaluate" and done["progress"]["done"] == 3
    assert [e["id"] for e in events] == list(range(1, len(events) + 1)) and events[0]["event"] == "progress"
    assert events[-1] == {"id": len(events), "event": "result", "data": {}}
