"""Jobs in memory: submitted work runs in the background; GET /jobs/{id} shows it, its events stream
over SSE (resumable), DELETE cancels it; only its owner (or an admin key) sees it."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest

from app.errors import VGateError
from tests.integration.test_agent_api import parse_sse
from tests.support import gateway

KEY, OTHER, ADMIN = "vg-" + "a" * 29, "vg-" + "b" * 29, "vg-" + "c" * 29
KEYS = [
    {"id": "app", "key": KEY, "scopes": ["predict"]},
    {"id": "other", "key": OTHER, "scopes": ["predict"]},
    {"id": "ops", "key_sha256": hashlib.sha256(ADMIN.encode()).hexdigest(), "scopes": ["admin", "predict"]},
]


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


class Gated:
    """A job's work: ``steps`` examples, each waiting for the test to let it go (``release``)."""

    def __init__(self, steps: int = 3, result: dict | None = None, fail: BaseException | None = None) -> None:
        self.steps = steps
        self.result = {"score": 0.5} if result is None else result
        self.fail = fail
        self.gate = asyncio.Semaphore(0)
        self.cancelled = False
        self.started = asyncio.Event()

    def release(self, n: int = 1) -> None:
        for _ in range(n):
            self.gate.release()

    async def __call__(self, progress) -> dict:
        self.started.set()
        try:
            for i in range(self.steps):
                await self.gate.acquire()
                await progress.advance(1, score_so_far=i / self.steps)
            if self.fail is not None:
                raise self.fail
            return self.result
        except asyncio.CancelledError:
            self.cancelled = True
            raise


async def wait_status(gw, job_id: str, *statuses: str, headers=None, timeout: float = 5) -> dict:
    async with asyncio.timeout(timeout):
        while True:
            r = await gw.client.get(f"/jobs/{job_id}", headers=headers)
            assert r.status_code == 200, r.text
            if r.json()["status"] in statuses:
                return r.json()
            await asyncio.sleep(0.02)


async def test_a_job_runs_in_the_background_and_its_events_stream_with_ids_that_resume(sim_url):
    async with gateway(sim_url) as gw:
        work = Gated(steps=3, result={"score": 1.0, "count": 3})
        job_id = await gw.state.jobs.submit("evaluate", work, total=3, owner=None)
        assert job_id.startswith("job_") and len(job_id) == 36
        await work.started.wait()
        work.release()
        running = await wait_status(gw, job_id, "running")
        assert running["kind"] == "evaluate" and "result" not in running and "finished_at" not in running
        work.release(2)
        done = await wait_status(gw, job_id, "succeeded")
        assert done["result"] == {"score": 1.0, "count": 3}
        assert done["progress"]["done"] == 3 and done["progress"]["total"] == 3
        assert done["finished_at"] >= done["created_at"]

        r = await gw.client.get(f"/jobs/{job_id}/events")  # a late client: every event from the first
        assert r.status_code == 200 and r.headers["x-vgate-job-id"] == job_id
        events = parse_sse(r.text)
        ids = [e["id"] for e in events]
        assert ids == list(range(1, len(events) + 1))
        assert events[-1] == {"id": ids[-1], "event": "result", "data": {"score": 1.0, "count": 3}}
        progress = [e["data"] for e in events if e["event"] == "progress"]
        assert progress and progress[-1]["done"] == 3 and progress[-1]["total"] == 3
        assert [p["done"] for p in progress] == sorted(p["done"] for p in progress)

        for after in range(len(events) + 1):  # resumed after each event: the rest, no gap, no duplicate
            rest = await gw.client.get(f"/jobs/{job_id}/events", headers={"last-event-id": str(after)})
            assert parse_sse(rest.text) == events[after:]
        bad = await gw.client.get(f"/jobs/{job_id}/events", headers={"last-event-id": "x1"})
        assert bad.status_code == 422
    assert gw.metric("vgate_jobs_total", kind="evaluate", status="succeeded") == 1
    assert gw.metric("vgate_jobs_running", kind="evaluate") == 0


async def test_a_live_stream_follows_the_job_to_its_result(sim_url):
    async with gateway(sim_url) as gw:
        work = Gated(steps=2)
        job_id = await gw.state.jobs.submit("evaluate", work, total=2, owner=None)
        job = await gw.state.jobs.find(job_id)

        async def follow() -> list:
            return [ev async for ev in gw.state.jobs.follow(job)]

        follower = asyncio.ensure_future(follow())
        await work.started.wait()
        work.release()
        await asyncio.sleep(0.3)  # past the coalescing interval: its own event
        assert not follower.done()
        work.release()
        events = await asyncio.wait_for(follower, 5)
    assert [e.event for e in events] == ["progress", "progress", "result"]
    assert [e.id for e in events] == [1, 2, 3]


async def test_progress_is_coalesced_and_the_last_always_published(sim_url):
    async def work(progress) -> dict:
        for _ in range(1000):
            await progress.advance()
            await asyncio.sleep(0)
        return {"n": 1000}

    async with gateway(sim_url) as gw:
        job_id = await gw.state.jobs.submit("evaluate", work, total=1000, owner=None)
        await wait_status(gw, job_id, "succeeded")
        events = parse_sse((await gw.client.get(f"/jobs/{job_id}/events")).text)
    progress = [e["data"]["done"] for e in events if e["event"] == "progress"]
    assert len(progress) <= 10 and progress[-1] == 1000
    assert events[-1]["event"] == "result"


async def test_a_failed_job_carries_the_error_body_and_an_internal_error_nothing_of_its_insides(sim_url):
    async with gateway(sim_url) as gw:
        err = VGateError("budget reached", status_code=429, type="budget_exceeded", limit="max_cost_usd")
        typed = Gated(steps=1, fail=err)
        internal = Gated(steps=1, fail=RuntimeError("secret detail at line 42"))
        ids = [await gw.state.jobs.submit("evaluate", w, total=1, owner=None) for w in (typed, internal)]
        typed.release()
        internal.release()
        failed = [await wait_status(gw, i, "failed") for i in ids]
        streams = [(await gw.client.get(f"/jobs/{i}/events")).text for i in ids]
    assert failed[0]["error"] == {"type": "budget_exceeded", "message": "budget reached", "limit": "max_cost_usd",
                                  "status": 429}
    assert failed[1]["error"]["type"] == "internal_error" and failed[1]["error"]["status"] == 500
    assert "secret" not in json.dumps(failed[1]) and "Traceback" not in json.dumps(failed[1])
    assert "result" not in failed[0]
    last = parse_sse(streams[1])[-1]
    assert last["event"] == "error" and last["data"] == failed[1]["error"]
    assert "secret" not in streams[1]


async def test_delete_cancels_the_work(sim_url):
    async with gateway(sim_url) as gw:
        work = Gated(steps=5)
        job_id = await gw.state.jobs.submit("optimize", work, total=5, owner=None)
        await work.started.wait()
        work.release()
        r = await gw.client.delete(f"/jobs/{job_id}")
        again = await gw.client.delete(f"/jobs/{job_id}")  # finished: left as it is
        events = parse_sse((await gw.client.get(f"/jobs/{job_id}/events")).text)
        job = await gw.state.jobs.find(job_id)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert r.json()["error"]["type"] == "job_cancelled"
    assert again.status_code == 200 and again.json() == r.json()
    assert work.cancelled and job.task.cancelled()
    assert events[-1]["event"] == "error" and events[-1]["data"]["type"] == "job_cancelled"
    assert gw.metric("vgate_jobs_total", kind="optimize", status="cancelled") == 1


async def test_shutdown_cancels_running_jobs(sim_url):
    async with gateway(sim_url) as gw:
        work = Gated(steps=5)
        job_id = await gw.state.jobs.submit("evaluate", work, total=5, owner=None)
        await work.started.wait()
        jobs = gw.state.jobs
    job = jobs.local.get(job_id)
    assert work.cancelled and job.status == "cancelled" and job.error["type"] == "shutting_down"
    assert job.events[-1].event == "error"


async def test_a_job_is_its_owners_and_admins_alone(sim_url):
    async with gateway(sim_url, api_keys=KEYS) as gw:
        job_id = await gw.state.jobs.submit("evaluate", Gated(steps=0), total=0, owner="app")
        mine = await wait_status(gw, job_id, "succeeded", headers=bearer(KEY))
        admin = await gw.client.get(f"/jobs/{job_id}", headers=bearer(ADMIN))
        other = [await gw.client.get(f"/jobs/{job_id}", headers=bearer(OTHER)),
                 await gw.client.get(f"/jobs/{job_id}/events", headers=bearer(OTHER)),
                 await gw.client.delete(f"/jobs/{job_id}", headers=bearer(OTHER))]
        unknown = await gw.client.get("/jobs/job_" + "0" * 32, headers=bearer(KEY))
        malformed = [await gw.client.get(f"/jobs/{p}", headers=bearer(KEY))
                     for p in ("nope", "job_XYZ", "job_" + "a" * 33, "%00", "job_" + "A" * 32)]
        none = await gw.client.get(f"/jobs/{job_id}")
    assert mine["result"] == {"score": 0.5} and admin.status_code == 200
    for r in [*other, unknown, *malformed]:
        assert r.status_code == 404 and r.json()["error"]["type"] == "job_not_found", r.text
    # nothing tells it from a job that does not exist
    assert other[0].json()["error"]["message"] == unknown.json()["error"]["message"].replace("0" * 32, job_id[4:])
    assert none.status_code == 401


async def test_finished_jobs_expire_and_are_bounded_in_number(sim_url):
    async with gateway(sim_url, job_ttl_s=0.3, jobs_max_kept=2) as gw:
        ids = []
        for _ in range(3):
            ids.append(await gw.state.jobs.submit("evaluate", Gated(steps=0), total=0, owner=None))
            await wait_status(gw, ids[-1], "succeeded")
        kept = [(await gw.client.get(f"/jobs/{i}")).status_code for i in ids]
        await asyncio.sleep(0.4)
        expired = [(await gw.client.get(f"/jobs/{i}")).status_code for i in ids]
    assert kept == [404, 200, 200]  # the oldest finished one made room
    assert expired == [404, 404, 404]


async def test_running_jobs_are_bounded(sim_url):
    async with gateway(sim_url, jobs_max_running=1) as gw:
        work = Gated(steps=1)
        await gw.state.jobs.submit("evaluate", work, total=1, owner=None)
        with pytest.raises(VGateError) as refused:
            await gw.state.jobs.submit("evaluate", Gated(), total=1, owner=None)
        work.release()
    assert refused.value.status_code == 503 and refused.value.type == "jobs_overloaded"


async def read_until(response, enough) -> list[dict]:
    buf, events = "", []
    async for chunk in response.aiter_text():
        buf += chunk
        events = parse_sse(buf.rsplit("\n\n", 1)[0])
        if enough(events):
            break
    return events


async def test_over_a_socket_events_arrive_live_and_a_client_leaving_does_not_stop_the_job(sim_url):
    import httpx
    import uvicorn

    from app.main import create_app
    from tests.support import free_port, make_settings

    port = free_port()
    app = create_app(make_settings(sim_url))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on",
                                           loop="asyncio"))
    serving = asyncio.ensure_future(server.serve())  # in this loop: the test submits into the app's loop
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.02)
        work = Gated(steps=2)
        job_id = await app.state.jobs.submit("evaluate", work, total=2, owner=None)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            await work.started.wait()
            work.release()
            async with c.stream("GET", f"/jobs/{job_id}/events") as r:
                assert r.headers["content-type"].startswith("text/event-stream")
                first = await asyncio.wait_for(read_until(r, lambda evs: evs), 5)  # before the job ends
            await asyncio.sleep(0.1)
            assert (await c.get(f"/jobs/{job_id}")).json()["status"] == "running"  # the client left; it runs on
            work.release()
            async with c.stream("GET", f"/jobs/{job_id}/events", headers={"last-event-id": "1"}) as r:
                rest = await asyncio.wait_for(read_until(r, lambda evs: evs and evs[-1]["event"] == "result"), 5)
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 15)
    assert [e["event"] for e in first] == ["progress"] and first[0]["id"] == 1
    assert [(e["id"], e["event"]) for e in rest] == [(2, "progress"), (3, "result")]
    assert not work.cancelled
