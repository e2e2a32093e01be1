"""Two gateway processes sharing one real Redis, as two replicas behind a load balancer: a key's
limits, budget and revocation hold across both."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest

from tests.support import free_port, spawn

ADMIN = "vg-admin-" + "a" * 24
USER = "vg-user-" + "b" * 24
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
AUTH = {"authorization": f"Bearer {ADMIN}"}
USE = {"authorization": f"Bearer {USER}"}
BUDGET = 0.2


@pytest.fixture(scope="module")
def replicas(sim_url, redis_url) -> Iterator[tuple[str, str]]:
    import redis

    redis.Redis.from_url(redis_url).flushall()
    keys = [{"id": "admin", "key": ADMIN, "scopes": ["admin"]},
            {"id": "rpm-key", "key": "vg-rpm-" + "c" * 24, "rpm": 20},
            {"id": "user", "key": USER, "budget_usd_daily": BUDGET}]
    env = {"VGATE_REDIS_URL": redis_url, "VGATE_API_KEYS": json.dumps(keys), "VGATE_LOG_LEVEL": "WARNING",
           "VGATE_PRICES": json.dumps({"sim-model": {"input_per_1k": 1.0, "output_per_1k": 1.0}})}
    ports = [free_port(), free_port()]
    with spawn(["serve", "--upstream", sim_url, "--port", str(ports[0])], ports[0], env=env) as a, \
            spawn(["serve", "--upstream", sim_url, "--port", str(ports[1])], ports[1], env=env) as b:
        yield a, b


async def test_requests_per_minute_hold_across_two_processes(replicas):
    use = {"authorization": "Bearer vg-rpm-" + "c" * 24}
    async with httpx.AsyncClient(timeout=30) as c:
        answers = await asyncio.gather(*(c.post(f"{replicas[i % 2]}/v1/chat/completions", json=CHAT, headers=use)
                                         for i in range(30)))
    codes = [r.status_code for r in answers]
    assert codes.count(200) == 20 and codes.count(429) == 10  # exactly the limit, however it was split
    assert {r.json()["error"]["limit"] for r in answers if r.status_code == 429} == {"rpm"}
    assert {codes[i] for i in range(0, 30, 2)} >= {200} and {codes[i] for i in range(1, 30, 2)} >= {200}


async def test_a_budget_holds_under_200_concurrent_calls_split_across_two_processes(replicas):
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=400)) as c:
        answers = await asyncio.gather(*(c.post(f"{replicas[i % 2]}/v1/chat/completions", json=CHAT, headers=USE)
                                         for i in range(200)))
        ok = [r for r in answers if r.status_code == 200]
        for _ in range(100):  # each process settles its calls' usage in the background, within moments
            report = (await c.get(f"{replicas[0]}/admin/usage?key=user", headers=AUTH)).json()
            if report["totals"]["requests"] == len(ok):
                break
            await asyncio.sleep(0.02)
    refused = [r for r in answers if r.status_code == 429]
    assert ok and len(ok) + len(refused) == 200
    assert {r.json()["error"]["limit"] for r in refused} == {"budget_usd_daily"}
    one_reservation = (1 + 16 + CHAT["max_tokens"]) / 1000  # prompt estimate + max_tokens at $1 per 1k
    assert report["totals"]["requests"] == len(ok)
    assert report["totals"]["cost_usd"] <= BUDGET + one_reservation
    assert report["totals"]["cost_usd"] == pytest.approx(sum(r.json()["usage"]["total_tokens"] for r in ok) / 1000)


async def test_a_key_revoked_on_one_process_is_refused_by_the_other_within_a_second(replicas):
    a, b = replicas
    async with httpx.AsyncClient(timeout=30) as c:
        made = (await c.post(f"{a}/admin/keys", headers=AUTH, json={"scopes": ["openai"]})).json()
        use = {"authorization": f"Bearer {made['key']}"}
        before = await c.post(f"{b}/v1/chat/completions", json=CHAT, headers=use)
        assert (await c.delete(f"{a}/admin/keys/{made['id']}", headers=AUTH)).status_code == 204
        loop = asyncio.get_running_loop()
        revoked_at = loop.time()
        while (await c.post(f"{b}/v1/chat/completions", json=CHAT, headers=use)).status_code == 200:
            assert loop.time() - revoked_at < 1.0, "the other process still accepted it a second later"
            await asyncio.sleep(0.02)
    assert before.status_code == 200
