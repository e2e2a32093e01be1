"""A key's limits and budgets, against both stores (this process's memory and a real Redis):
requests and tokens per minute, concurrency, USD per day, the reservation a call holds while it
runs, and the usage /admin/usage reports."""

from __future__ import annotations

import asyncio

import pytest

from app.services.limits import Limits, Periods
from tests.support import gateway

ADMIN = "vg-admin-" + "a" * 24
KEY = "vg-user-" + "b" * 24
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
PREDICT = {"signature": "q -> a", "inputs": {"q": "x"}}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def keys(**limits) -> list[dict]:
    return [{"id": "admin", "key": ADMIN, "scopes": ["admin"]},
            {"id": "user", "key": KEY, "alias": "team-a", **limits}]


async def test_exactly_rpm_requests_succeed_in_a_minute_and_the_rest_name_the_limit(sim_url, store):
    async with gateway(sim_url, api_keys=keys(rpm=5), **store) as gw:
        answers = [await gw.client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY)) for _ in range(8)]
    assert [r.status_code for r in answers] == [200] * 5 + [429] * 3
    assert [r.headers["x-ratelimit-remaining-requests"] for r in answers[:5]] == ["4", "3", "2", "1", "0"]
    assert all(r.headers["x-ratelimit-limit-requests"] == "5" for r in answers[:5])
    refused = answers[5]
    err = refused.json()["error"]
    assert err["type"] == "rate_limited" and err["limit"] == "rpm" and "5 requests per minute" in err["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60 and err["code"] == 429  # the OpenAI shape on /v1


async def test_concurrent_requests_beyond_max_concurrent_are_refused_and_slots_come_back(sim_slow_url, store):
    async with gateway(sim_slow_url, api_keys=keys(max_concurrent=2), **store) as gw:
        slow = {**CHAT, "max_tokens": 8}
        first = [asyncio.create_task(gw.client.post("/v1/chat/completions", json=slow, headers=bearer(KEY)))
                 for _ in range(2)]
        await asyncio.sleep(0.15)  # both are in flight (8 decode steps of 50 ms)
        third = await gw.client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY))
        done = await asyncio.gather(*first)
        after = await gw.client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY))
    assert [r.status_code for r in done] == [200, 200]
    assert third.status_code == 429 and third.json()["error"]["limit"] == "max_concurrent"
    assert after.status_code == 200  # the leases were given back


async def test_tokens_per_minute_count_real_usage_and_refuse_once_spent(sim_url, store):
    async with gateway(sim_url, api_keys=keys(tpm=60), **store) as gw:
        answers, used = [], 0
        for _ in range(30):
            r = await gw.client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY))
            answers.append(r)
            if r.status_code != 200:
                break
            used += r.json()["usage"]["total_tokens"]
            await gw.state.meter.drain()  # the usage is settled in the background
    refused = answers[-1]
    assert refused.status_code == 429 and refused.json()["error"]["limit"] == "tpm"
    assert used >= 60 - (CHAT["max_tokens"] + 10)  # refused only once the minute's tokens ran out
    assert int(answers[-2].headers["x-ratelimit-remaining-tokens"]) < 60


async def test_a_budget_holds_under_200_concurrent_calls(sim_url, store):
    # Every call costs about the same: ~10 prompt tokens, 4 completion tokens at $1 per 1k tokens; each
    # reserves 1 + 8 x 2 (the template's tokens for 1 message) + 4 = 21 tokens.
    prices = {"sim-model": {"input_per_1k": 1.0, "output_per_1k": 1.0}}
    budget = 0.2
    async with gateway(sim_url, api_keys=keys(budget_usd_daily=budget), prices=prices,
                       max_inflight_per_upstream=256, **store) as gw:
        answers = await asyncio.gather(*(gw.client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY))
                                         for _ in range(200)))
        report = await gw.client.get("/admin/usage", headers=bearer(ADMIN))
    ok = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code == 429]
    assert len(ok) + len(refused) == 200 and ok and refused
    assert {r.json()["error"]["type"] for r in refused} == {"budget_exceeded"}
    assert all(r.json()["error"]["limit"] == "budget_usd_daily" for r in refused)
    spent = report.json()["totals"]["cost_usd"]
    one_reservation = (1 + 16 + CHAT["max_tokens"]) / 1000
    assert spent <= budget + one_reservation
    assert report.json()["totals"]["requests"] == len(ok)
    assert spent == pytest.approx(sum(r.json()["usage"]["total_tokens"] for r in ok) / 1000)


async def test_a_cancelled_call_gives_its_reservation_back(sim_slow_url, store):
    # The budget fits one call's reservation (17 prompt tokens + 40 max_tokens at $1/1k) but not two.
    prices = {"sim-model": {"input_per_1k": 1.0, "output_per_1k": 1.0}}
    slow = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 40}
    async with gateway(sim_slow_url, api_keys=keys(budget_usd_daily=0.06), prices=prices, **store) as gw:
        task = asyncio.create_task(gw.client.post("/v1/chat/completions", json=slow, headers=bearer(KEY)))
        await asyncio.sleep(0.2)
        while_held = await gw.client.post("/v1/chat/completions", json=slow, headers=bearer(KEY))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0.1)
        await gw.state.meter.drain()
        after = await gw.client.post("/v1/chat/completions", json={**slow, "max_tokens": 4}, headers=bearer(KEY))
    assert while_held.status_code == 429 and while_held.json()["error"]["limit"] == "budget_usd_daily"
    assert after.status_code == 200, after.text


async def test_usage_is_reported_by_key_model_and_day(sim_url, store):
    async with gateway(sim_url, api_keys=keys(), **store) as gw:
        served = [await gw.client.post("/predict", json=PREDICT, headers=bearer(KEY)) for _ in range(3)]
        chat = await gw.client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY))
        report = await gw.client.get("/admin/usage", headers=bearer(ADMIN))
        only = await gw.client.get("/admin/usage?key=nobody", headers=bearer(ADMIN))
        bad = await gw.client.get("/admin/usage?since=2026-12-05&until=2026-12-01", headers=bearer(ADMIN))
        refused = await gw.client.get("/admin/usage", headers=bearer(KEY))
    rows = report.json()["usage"]
    assert len(rows) == 1 and rows[0]["key"] == "user" and rows[0]["model"] == "sim-model"
    assert rows[0]["requests"] == 4
    assert rows[0]["prompt_tokens"] == sum(r.json()["usage"]["prompt_tokens"] for r in served) + \
        chat.json()["usage"]["prompt_tokens"]
    assert only.json()["usage"] == [] and bad.status_code == 422 and refused.status_code == 403


async def test_per_key_metrics_carry_the_alias_only_when_asked(sim_url):
    async with gateway(sim_url, api_keys=keys(), metrics_key_alias=True) as gw:
        await gw.client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY))
        aliased = gw.metric("vgate_key_requests_total", key="team-a", model="sim-model")
    async with gateway(sim_url, api_keys=keys(rpm=1)) as gw:
        await gw.client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY))
        await gw.client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY))
        pooled = gw.metric("vgate_key_requests_total", key="all", model="sim-model")
        refusals = gw.metric("vgate_limit_refusals_total", limit="rpm")
    assert aliased == 1 and pooled == 1 and refusals == 1


PRICES = {"sim-model": {"input_per_1k": 1.0, "output_per_1k": 1.0}}


async def _spend(gw, path: str, body: dict, n: int) -> tuple[list, dict]:
    answers = await asyncio.gather(*(gw.client.post(path, json=body, headers=bearer(KEY)) for _ in range(n)))
    await gw.state.meter.drain()
    return answers, (await gw.client.get("/admin/usage", headers=bearer(ADMIN))).json()["totals"]


async def test_a_call_that_names_no_max_tokens_is_capped_so_the_budget_holds(sim_url, store):
    # Without a cap a model may run to its context (min_tokens forces it here); the reservation is
    # then no bound. A key with a budget gets max_tokens = limits_default_completion_tokens.
    body = {"messages": [{"role": "user", "content": "hi"}], "min_tokens": 1000}
    async with gateway(sim_url, api_keys=keys(budget_usd_daily=1.0), prices=PRICES,
                       limits_default_completion_tokens=400, **store) as gw:
        answers, totals = await _spend(gw, "/v1/chat/completions", body, 20)
    ok = [r for r in answers if r.status_code == 200]
    assert ok and all(r.json()["usage"]["completion_tokens"] <= 400 for r in ok)
    assert totals["cost_usd"] <= 1.0 + (17 + 400) / 1000


async def test_a_list_of_prompts_reserves_for_every_completion(sim_url, store):
    body = {"prompt": ["a"] * 50, "max_tokens": 20, "min_tokens": 20}
    async with gateway(sim_url, api_keys=keys(budget_usd_daily=5.0), prices=PRICES, **store) as gw:
        answers, totals = await _spend(gw, "/v1/completions", body, 40)
    assert any(r.status_code == 200 for r in answers) and any(r.status_code == 429 for r in answers)
    assert totals["cost_usd"] <= 5.0  # the reservations (50 x (12 + 20) tokens each) bound what they spend


async def test_a_token_bound_that_is_not_a_positive_integer_is_a_400_for_a_key_with_a_budget(sim_url):
    async with gateway(sim_url, api_keys=keys(budget_usd_daily=1.0), prices=PRICES) as gw:
        r = await gw.client.post("/v1/chat/completions", json={**CHAT, "max_tokens": "5000"}, headers=bearer(KEY))
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"


async def test_remaining_headers_count_the_request_itself(sim_url, store):
    async with gateway(sim_url, api_keys=keys(tpm=1000, budget_usd_daily=1.0), prices=PRICES, **store) as gw:
        r = await gw.client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY))
    used = r.json()["usage"]["total_tokens"]
    assert int(r.headers["x-ratelimit-remaining-tokens"]) == 1000 - used
    assert float(r.headers["x-vgate-budget-remaining-usd-daily"]) == pytest.approx(1.0 - used / 1000, abs=1e-6)


async def test_a_refusal_carries_the_remaining_headers(sim_url, store):
    async with gateway(sim_url, api_keys=keys(rpm=1), **store) as gw:
        await gw.client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY))
        r = await gw.client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY))
    assert r.status_code == 429 and r.headers["x-ratelimit-remaining-requests"] == "0"


async def test_calls_the_upstream_refused_are_not_requests_in_the_usage_report(sim_url, store):
    bad = {**CHAT, "seed": "x"}  # the simulator answers 400
    async with gateway(sim_url, api_keys=keys(budget_usd_daily=5.0), **store) as gw:
        r = await gw.client.post("/v1/chat/completions", json=bad, headers=bearer(KEY))
        await gw.state.meter.drain()
        rows = (await gw.client.get("/admin/usage", headers=bearer(ADMIN))).json()["usage"]
    assert r.status_code == 400 and rows == []


async def test_a_call_cancelled_while_its_reservation_is_in_flight_gives_it_back(sim_url, redis_clean):
    from types import SimpleNamespace

    async with gateway(sim_url, api_keys=keys(), redis_url=redis_clean, prices={"m": PRICES["sim-model"]}) as gw:
        meter = gw.state.meter
        principal = SimpleNamespace(id="k", alias=None, limits=Limits(budget_usd_daily=1.0))
        for spins in list(range(1, 30)) * 2:
            call = SimpleNamespace(principal=principal, route="openai_chat", max_tokens=100, outputs=1, model="m",
                                   messages=[{"role": "user", "content": "hi"}], tools=None, prompt_chars=2,
                                   reservation=None, label="m", taken=False)
            task = asyncio.create_task(meter.reserve(call))
            for _ in range(spins):
                await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if call.reservation is not None:
                meter.settle(call, 0, 0, 0.0)
        await meter.drain()
        call.max_tokens, call.reservation = 880, None  # 0.897 of the 1.0: fits only if nothing is held
        await meter.reserve(call)
    assert call.reservation is not None


async def test_a_lease_redis_could_not_take_back_is_taken_back_once_it_answers(sim_url, redis_clean):
    from types import SimpleNamespace

    import redis.asyncio as aredis

    async with gateway(sim_url, api_keys=keys(), redis_url=redis_clean) as gw:
        meter = gw.state.meter
        principal = SimpleNamespace(id="k", alias=None, limits=Limits(max_concurrent=1))
        admission = await meter.admit(principal)
        other = aredis.Redis.from_url(redis_clean)
        await other.execute_command("CLIENT", "PAUSE", "3000", "ALL")  # Redis stalls past two timeouts
        meter.leave(principal, admission)  # times out: retried in the background
        await asyncio.sleep(5.5)
        again = await meter.admit(principal)
        await other.aclose()
    assert again is not None and again.verdict.ok


async def test_reservations_never_touch_the_money_spent(redis_clean):
    # A reservation that lapses (its replica died, and Redis expired what it held) gives nothing back
    # because it never took anything from the spent total.
    import redis.asyncio as aredis

    from app.services.limits import RedisLimitStore

    client = aredis.Redis.from_url(redis_clean)
    store = RedisLimitStore(client)
    p = Periods.at()
    assert (await store.reserve("k", Limits(budget_usd_daily=1.0), "r1", 10, 0.8, 0.3, p)).ok
    spent = await client.get(f"vg:k:{{k}}:d:{p.day}")
    await client.delete("vg:k:{k}:res", "vg:k:{k}:resv", "vg:k:{k}:rsum")  # as their TTL would
    after = await store.reserve("k", Limits(budget_usd_daily=1.0), "r2", 10, 0.9, 10, p)
    await client.aclose()
    assert spent is None and after.ok
