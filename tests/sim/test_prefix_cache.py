"""Simulated automatic prefix caching: block hashes, hits, eviction, metrics."""

from __future__ import annotations

from app.sim.prefix_cache import BLOCK_SIZE, PrefixCache, block_hashes
from tests.sim.helpers import USER


def test_blocks_cover_full_blocks_and_chain_the_prefix():
    tokens = [f"t{i}" for i in range(50)]
    hashes = block_hashes(tokens)
    assert len(hashes) == 50 // BLOCK_SIZE
    changed = block_hashes(["x", *tokens[1:]])
    assert all(a != b for a, b in zip(hashes, changed, strict=True))  # a change early changes every later block
    later = block_hashes([*tokens[:40], "x", *tokens[41:]])
    assert later[:2] == hashes[:2] and later[2] != hashes[2]


def test_match_counts_leading_cached_blocks():
    cache = PrefixCache(capacity_tokens=10_000)
    a = block_hashes([f"t{i}" for i in range(64)])
    assert cache.match(a, 64) == 0
    cache.insert(a)
    b = block_hashes([*(f"t{i}" for i in range(40)), *(f"u{i}" for i in range(24))])
    assert cache.match(b, 64) == 2 * BLOCK_SIZE
    assert cache.match(a, 64) == 63  # fully cached: the last token is still computed
    assert (cache.queries, cache.hits) == (192, 95)


def test_least_recently_used_blocks_are_evicted():
    cache = PrefixCache(capacity_tokens=4 * BLOCK_SIZE)
    a = block_hashes([f"a{i}" for i in range(48)])
    b = block_hashes([f"b{i}" for i in range(48)])
    cache.insert(a)
    cache.insert(b)
    assert cache.match(b, 100) == 48
    assert cache.match(a, 100) == 0  # only one of a's three blocks is left, and not the first


async def test_shared_prefix_hits_and_reset(client):
    system = {"role": "system", "content": "You are a careful assistant. " * 20}
    for question in ("What is 1 + 1?", "What is 2 + 2?"):
        messages = [system, {"role": "user", "content": question}]
        r = await client.post("/v1/chat/completions", json={"messages": messages})
        assert r.status_code == 200
    s = (await client.get("/sim/stats")).json()
    assert s["prefix_cache_hits_total"] >= 96 and s["prefix_cache_queries_total"] > s["prefix_cache_hits_total"]
    metrics = (await client.get("/metrics")).text
    assert 'vllm:prefix_cache_hits_total{engine="0",model_name="sim-model"}' in metrics
    assert 'vllm:prefix_cache_queries_total{engine="0",model_name="sim-model"}' in metrics

    assert (await client.post("/reset_prefix_cache")).status_code == 200
    await client.post("/sim/reset")
    await client.post("/v1/chat/completions", json={"messages": [system, *USER]})
    assert (await client.get("/sim/stats")).json()["prefix_cache_hits_total"] == 0
