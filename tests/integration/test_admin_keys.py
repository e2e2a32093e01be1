"""/admin/keys: keys made, listed, changed and revoked at run time, in memory or in a real Redis."""

from __future__ import annotations

import asyncio
import hashlib

from tests.support import gateway

ADMIN = "vg-admin-" + "a" * 24
USER = "vg-user-" + "b" * 24
CONFIG = [{"id": "admin", "key": ADMIN, "scopes": ["admin"]}, {"id": "fixed", "key": USER}]
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
AUTH = {"authorization": f"Bearer {ADMIN}"}


async def test_a_key_is_shown_once_works_within_its_scopes_and_limits_and_dies_when_revoked(sim_url, store):
    async with gateway(sim_url, api_keys=CONFIG, **store) as gw:
        made = await gw.client.post("/admin/keys", headers=AUTH,
                                    json={"id": "team-b", "alias": "B", "scopes": ["openai"], "rpm": 2})
        key = made.json()["key"]
        use = {"authorization": f"Bearer {key}"}
        calls = [await gw.client.post("/v1/chat/completions", json=CHAT, headers=use) for _ in range(3)]
        predict = await gw.client.post("/predict", json={"signature": "q -> a", "inputs": {"q": "x"}}, headers=use)
        listed = await gw.client.get("/admin/keys", headers=AUTH)
        one = await gw.client.get("/admin/keys/team-b", headers=AUTH)
        changed = await gw.client.patch("/admin/keys/team-b", headers=AUTH, json={"rpm": None, "scopes": None})
        await asyncio.sleep(gw.state.settings.key_cache_s)
        unlimited = await gw.client.post("/v1/chat/completions", json=CHAT, headers=use)
        gone = await gw.client.delete("/admin/keys/team-b", headers=AUTH)
        after = await gw.client.post("/v1/chat/completions", json=CHAT, headers=use)
        again = await gw.client.delete("/admin/keys/team-b", headers=AUTH)
    assert made.status_code == 201 and key.startswith("vg-") and made.json()["prefix"] == key[:8]
    assert [c.status_code for c in calls] == [200, 200, 429] and predict.status_code == 403
    ids = {k["id"]: k for k in listed.json()["keys"]}
    assert set(ids) == {"admin", "fixed", "team-b"} and ids["fixed"]["source"] == "config"
    assert all("key" not in k for k in listed.json()["keys"]) and "key" not in one.json()
    assert ADMIN not in listed.text and key not in listed.text and hashlib.sha256(key.encode()).hexdigest() \
        not in listed.text
    assert changed.json()["rpm"] is None and changed.json()["scopes"] == ["openai"]
    assert unlimited.status_code == 200
    assert gone.status_code == 204 and after.status_code == 401 and again.status_code == 404


async def test_configured_keys_are_changed_in_the_configuration_and_ids_are_unique(sim_url, store):
    async with gateway(sim_url, api_keys=CONFIG, **store) as gw:
        patch = await gw.client.patch("/admin/keys/fixed", headers=AUTH, json={"rpm": 1})
        delete = await gw.client.delete("/admin/keys/fixed", headers=AUTH)
        taken = await gw.client.post("/admin/keys", headers=AUTH, json={"id": "fixed"})
        first = await gw.client.post("/admin/keys", headers=AUTH, json={"id": "x"})
        twice = await gw.client.post("/admin/keys", headers=AUTH, json={"id": "x"})
        bad = await gw.client.post("/admin/keys", headers=AUTH, json={"scopes": ["root"]})
        by_user = await gw.client.post("/admin/keys", headers={"authorization": f"Bearer {USER}"}, json={})
    assert patch.status_code == 409 and patch.json()["error"]["type"] == "key_from_config"
    assert delete.status_code == 409 and taken.status_code == 409
    assert first.status_code == 201 and twice.status_code == 409 and twice.json()["error"]["type"] == "key_conflict"
    assert bad.status_code == 422 and by_user.status_code == 403


async def test_with_access_control_off_keys_cannot_be_made(sim_url):
    async with gateway(sim_url) as gw:
        r = await gw.client.post("/admin/keys", json={})
    assert r.status_code == 409 and r.json()["error"]["type"] == "access_control_off"


async def test_a_key_revoked_on_one_replica_is_refused_by_another_within_a_second(sim_url, redis_clean):
    async with gateway(sim_url, api_keys=CONFIG, redis_url=redis_clean) as a, \
            gateway(sim_url, api_keys=CONFIG, redis_url=redis_clean) as b:
        key = (await a.client.post("/admin/keys", headers=AUTH, json={})).json()
        use = {"authorization": f"Bearer {key['key']}"}
        before = await b.client.post("/v1/chat/completions", json=CHAT, headers=use)
        await a.client.delete(f"/admin/keys/{key['id']}", headers=AUTH)
        loop = asyncio.get_running_loop()
        revoked_at = loop.time()
        while (await b.client.post("/v1/chat/completions", json=CHAT, headers=use)).status_code == 200:
            assert loop.time() - revoked_at < 1.0, "still accepted a second after revocation"
            await asyncio.sleep(0.02)
    assert before.status_code == 200


async def test_redis_down_limits_fail_closed_or_open_by_the_setting(sim_url):
    from tests.support import redis_server

    limited = [{"id": "admin", "key": ADMIN, "scopes": ["admin"]}, {"id": "fixed", "key": USER, "rpm": 100}]
    use = {"authorization": f"Bearer {USER}"}
    with redis_server() as url:
        async with gateway(sim_url, api_keys=limited, redis_url=url) as closed, \
                gateway(sim_url, api_keys=limited, redis_url=url, limits_fail_open=True) as open_:
            assert (await closed.client.post("/v1/chat/completions", json=CHAT, headers=use)).status_code == 200
            await _kill_redis(url)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            refused = await closed.client.post("/v1/chat/completions", json=CHAT, headers=use)
            took = loop.time() - t0
            through = await open_.client.post("/v1/chat/completions", json=CHAT, headers=use)
            made = await closed.client.post("/admin/keys", headers=AUTH, json={})
            metric = closed.metric("vgate_store_up")
    assert refused.status_code == 503 and refused.json()["error"]["type"] == "store_unavailable"
    assert "retry-after" in refused.headers and took < 3
    assert through.status_code == 200  # fail open: let through, uncounted
    assert made.status_code == 503 and metric == 0


async def _kill_redis(url: str) -> None:
    import redis.asyncio as aredis

    client = aredis.Redis.from_url(url)
    try:
        await client.shutdown(nosave=True)
    except Exception:
        pass  # the server closes the connection as it exits
    await asyncio.sleep(0.2)


async def test_usage_dates_out_of_range_are_a_422_not_a_500(sim_url):
    async with gateway(sim_url, api_keys=CONFIG) as gw:
        early = await gw.client.get("/admin/usage?until=0001-01-01", headers=AUTH)
        bad = await gw.client.get("/admin/usage?since=yesterday", headers=AUTH)
    assert early.status_code == 200 and early.json()["usage"] == []
    assert bad.status_code == 422


async def test_a_key_revoked_while_it_is_being_changed_stays_revoked(sim_url, redis_clean):
    async with gateway(sim_url, api_keys=CONFIG, redis_url=redis_clean, key_cache_s=0) as gw:
        for _ in range(20):
            made = (await gw.client.post("/admin/keys", headers=AUTH, json={})).json()
            patch, delete = await asyncio.gather(
                gw.client.patch(f"/admin/keys/{made['id']}", headers=AUTH, json={"rpm": 100}),
                gw.client.delete(f"/admin/keys/{made['id']}", headers=AUTH))
            use = {"authorization": f"Bearer {made['key']}"}
            assert delete.status_code == 204 and patch.status_code in (200, 404)
            assert (await gw.client.post("/v1/chat/completions", json=CHAT, headers=use)).status_code == 401
            listed = (await gw.client.get("/admin/keys", headers=AUTH)).json()["keys"]
            assert made["id"] not in {k["id"] for k in listed}


async def test_a_metrics_key_may_scrape_but_not_manage_keys(sim_url):
    scraper = "vg-scrape-" + "s" * 24
    keys = [*CONFIG, {"id": "prometheus", "key": scraper, "scopes": ["metrics"]}]
    use = {"authorization": f"Bearer {scraper}"}
    async with gateway(sim_url, api_keys=keys) as gw:
        scrape = await gw.client.get("/metrics", headers=use)
        admin = await gw.client.get("/metrics", headers=AUTH)
        make = await gw.client.post("/admin/keys", headers=use, json={})
    assert scrape.status_code == 200 and admin.status_code == 200 and make.status_code == 403
