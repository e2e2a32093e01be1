"""Program versions: save_version numbers them (the newest + 1) and keeps them in the programs
directory (loaded back at the next start) or in Redis (every replica serves them); GET
/predict/programs/{name} lists them; /predict runs any of them by reference or version."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from app.services.programs import ProgramRegistry, load_programs
from tests.support import gateway

DEMOS = [{"text": "Superb.", "sentiment": "positive", "confidence": 0.9}]
PROVENANCE = {"strategy": "bootstrap_few_shot", "metric": "exact_match", "trainset": 8, "valset": 4,
              "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}, "cost_usd": 0.001}


@pytest.fixture
def programs_dir(tmp_path: Path) -> Path:
    d = tmp_path / "programs"
    d.mkdir()
    for name in ("sentiment.json", "qa.json"):
        shutil.copy(Path("app/programs") / name, d / name)
    return d


async def save(registry: ProgramRegistry, name: str = "sentiment", score: float = 0.75, **kw):
    return await registry.save_version(registry.resolve(name), demos=kw.pop("demos", DEMOS), score_before=0.5,
                                       score_after=score, provenance=PROVENANCE, **kw)


async def test_a_version_in_memory_gets_the_next_number_and_keeps_the_base_definition():
    registry = ProgramRegistry(load_programs(Path("app/programs")))
    base = registry.resolve("sentiment")
    v2 = await save(registry)
    v3 = await save(registry, score=0.8, demos=[])
    assert (v2.version, v3.version) == (2, 3) and registry.resolve("sentiment") is v3
    assert v2.signature == base.signature and v2.instructions == base.instructions and v2.config == base.config
    assert v2.demos == DEMOS and v2.score == 0.75 and base.demos != DEMOS
    assert v2.provenance == {**PROVENANCE, "base_version": 1, "score_before": 0.5, "score_after": 0.75,
                             "created_at": v2.created_at}
    assert v2.created_at.endswith("Z")


async def test_a_multi_step_program_cannot_get_demos_of_its_own():
    registry = ProgramRegistry(load_programs(Path("app/programs")))
    with pytest.raises(Exception, match="has steps"):
        await save(registry, "research_answer")


async def test_a_version_saved_to_the_programs_dir_is_served_and_loaded_back_at_the_next_start(sim_url,
                                                                                                programs_dir):
    async with gateway(sim_url, programs_dir=programs_dir) as gw:
        v2 = await save(gw.state.programs)
        assert v2.version == 2
        on_disk = json.loads((programs_dir / "sentiment@2.json").read_text())
        assert on_disk["version"] == 2 and on_disk["demos"] == DEMOS and on_disk["score"] == 0.75
        newest = await gw.client.post("/predict", json={"program": "sentiment", "inputs": {"text": "great"}})
        old = await gw.client.post("/predict", json={"program": "sentiment", "version": 1, "inputs": {"text": "x"}})
    assert newest.status_code == 200 and newest.json()["program"] == "sentiment@2"
    assert old.status_code == 200 and old.json()["program"] == "sentiment"
    assert not [p for p in programs_dir.iterdir() if p.name.startswith(".")]  # no temporary file left

    async with gateway(sim_url, programs_dir=programs_dir) as gw:  # the next start
        listed = await gw.client.get("/predict/programs/sentiment")
        v3 = await save(gw.state.programs, score=0.9)
        pinned = await gw.client.post("/predict", json={"program": "sentiment@2", "inputs": {"text": "great"}})
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert body["name"] == "sentiment" and body["latest"] == 2
    assert [(v["version"], v["score"], v["demos"]) for v in body["versions"]] == [(1, None, 2), (2, 0.75, 1)]
    assert body["versions"][1]["provenance"]["strategy"] == "bootstrap_few_shot"
    assert body["versions"][1]["created_at"] == v2.created_at and body["versions"][0]["created_at"] is None
    assert v3.version == 3 and pinned.json()["program"] == "sentiment@2"


async def test_two_processes_sharing_a_dir_never_write_the_same_version(programs_dir):
    a = ProgramRegistry(load_programs(programs_dir), directory=programs_dir)
    b = ProgramRegistry(load_programs(programs_dir), directory=programs_dir)  # neither knows the other's
    saved = await asyncio.gather(*(save(r) for r in (a, b, a, b)))
    assert sorted(p.version for p in saved) == [2, 3, 4, 5]
    assert sorted(p.name for p in programs_dir.iterdir()) == [
        "qa.json", "sentiment.json", "sentiment@2.json", "sentiment@3.json", "sentiment@4.json", "sentiment@5.json"]


async def test_an_unwritable_programs_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    registry = ProgramRegistry(load_programs(Path("app/programs")), directory=blocker / "programs")
    with pytest.raises(Exception) as info:
        await save(registry)
    err = info.value
    assert err.status_code == 503 and err.type == "program_store_unavailable"
    assert "not writable" in err.message and "VGATE_PROGRAM_VERSIONS_DIR" in err.message
    assert str(tmp_path) not in str(err.body())  # the server's paths stay in its log
    assert registry.resolve("sentiment").version == 1  # nothing half-saved


async def test_listing_versions_of_an_unknown_or_malformed_name(sim_url):
    async with gateway(sim_url) as gw:
        unknown = await gw.client.get("/predict/programs/nope")
        pinned = await gw.client.get("/predict/programs/sentiment@1")
        steps = await gw.client.get("/predict/programs/research_answer")
        wrong = await gw.client.post("/predict", json={"program": "sentiment", "version": 7, "inputs": {"text": "x"}})
        clash = await gw.client.post("/predict", json={"program": "sentiment@1", "version": 2,
                                                       "inputs": {"text": "x"}})
        stray = await gw.client.post("/predict", json={"signature": "a -> b", "version": 2, "inputs": {"a": "x"}})
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "program_not_found"
    assert pinned.status_code == 422 and pinned.json()["error"]["type"] == "invalid_program_reference"
    assert steps.status_code == 200 and steps.json()["versions"][0]["steps"][0] == "plan"
    assert wrong.status_code == 404 and wrong.json()["error"]["versions"] == [1]
    assert clash.status_code == 422 and stray.status_code == 422


async def test_a_version_saved_on_one_replica_is_served_by_the_other(sim_url, redis_clean, programs_dir):
    async with gateway(sim_url, programs_dir=programs_dir, redis_url=redis_clean) as a, \
            gateway(sim_url, programs_dir=programs_dir, redis_url=redis_clean) as b:
        before = (await b.client.get("/predict/programs/sentiment")).json()
        v2 = await save(a.state.programs)
        assert v2.version == 2 and not (programs_dir / "sentiment@2.json").exists()  # in Redis, not a file
        loop = asyncio.get_running_loop()
        saved_at = loop.time()
        while True:  # b reads Redis at most every 0.5 s: it serves the new version within that
            r = await b.client.post("/predict", json={"program": "sentiment", "inputs": {"text": "great"}})
            assert r.status_code == 200, r.text
            if r.json()["program"] == "sentiment@2":
                break
            assert loop.time() - saved_at < 1.0, "the other replica still served version 1 a second later"
            await asyncio.sleep(0.05)
        listed = (await b.client.get("/predict/programs/sentiment")).json()
        # both save at once: the numbers never collide
        more = await asyncio.gather(*(save(g.state.programs) for g in (a, b, a, b, a, b)))
    assert before["latest"] == 1
    assert [v["version"] for v in listed["versions"]] == [1, 2]
    assert listed["versions"][1]["provenance"]["base_version"] == 1 and listed["versions"][1]["demos"] == 1
    assert sorted(p.version for p in more) == [3, 4, 5, 6, 7, 8]

    async with gateway(sim_url, programs_dir=programs_dir, redis_url=redis_clean) as c:  # a replica started later
        r = await c.client.post("/predict", json={"program": "sentiment@8", "inputs": {"text": "great"}})
        latest = (await c.client.get("/predict/programs")).json()["programs"]
    assert r.status_code == 200 and r.json()["program"] == "sentiment@8"
    assert {p["name"]: p["version"] for p in latest}["sentiment"] == 8


async def test_a_version_just_saved_on_one_replica_is_found_by_reference_on_the_other(sim_url, redis_clean,
                                                                                     programs_dir):
    """The client's way: optimize on one replica, then call ``sentiment@2`` (or list its versions)
    through another at once. A reference the replica does not know yet makes it read Redis now,
    rather than a 404 for up to REFRESH_S."""
    async with gateway(sim_url, programs_dir=programs_dir, redis_url=redis_clean) as a, \
            gateway(sim_url, programs_dir=programs_dir, redis_url=redis_clean) as b:
        assert (await b.client.get("/predict/programs/sentiment")).json()["latest"] == 1  # b has just looked
        v2 = await save(a.state.programs)
        r = await b.client.post("/predict", json={"program": v2.ref, "inputs": {"text": "great"}})
        assert r.status_code == 200, r.text
        assert r.json()["program"] == "sentiment@2"
        v3 = await save(a.state.programs)
        r = await b.client.post("/evaluate", json={"program": "sentiment", "version": v3.version, "dataset": [
            {"inputs": {"text": "great"}, "outputs": {"sentiment": "positive"}}]})
        assert r.status_code == 200, r.text
        assert r.json()["program"] == "sentiment@3"
        unknown = await b.client.post("/predict", json={"program": "sentiment@9", "inputs": {"text": "great"}})
    assert unknown.status_code == 404 and unknown.json()["error"]["versions"] == [1, 2, 3]


async def test_with_redis_away_the_versions_already_seen_are_served(sim_url, programs_dir):
    async with gateway(sim_url, programs_dir=programs_dir, redis_url="redis://127.0.0.1:1/0",
                       redis_timeout_s=0.2) as gw:
        r = await gw.client.post("/predict", json={"program": "sentiment", "inputs": {"text": "great"}})
        with pytest.raises(Exception) as info:
            await save(gw.state.programs)
    assert r.status_code == 200 and r.json()["program"] == "sentiment"
    assert info.value.status_code == 503


async def test_a_program_step_runs_the_newest_version_of_its_program_unless_pinned(sim_url, programs_dir):
    both = {"name": "both", "inputs": {"text": "str"}, "outputs": {"a": "newest.sentiment", "b": "pinned.sentiment"},
            "steps": [{"name": "newest", "program": "sentiment", "inputs": {"text": "inputs.text"}},
                      {"name": "pinned", "program": "sentiment@1", "inputs": {"text": "inputs.text"}}]}
    (programs_dir / "both.json").write_text(json.dumps(both))
    async with gateway(sim_url, programs_dir=programs_dir) as gw:
        first = (await gw.client.post("/predict", json={"program": "both", "inputs": {"text": "great"}})).json()
        await save(gw.state.programs)
        then = (await gw.client.post("/predict", json={"program": "both", "inputs": {"text": "great"}})).json()
    assert [s["program"] for s in first["trace"]] == ["sentiment", "sentiment"]
    assert [s["program"] for s in then["trace"]] == ["sentiment@2", "sentiment"]


async def test_versions_of_the_bundled_programs_are_saved_outside_the_package(sim_url, tmp_path, monkeypatch):
    """With the programs that ship in the package (no VGATE_PROGRAMS_DIR), a saved version goes to the
    user's data directory ($XDG_DATA_HOME/vgate/programs), never into the installed package (a demo's
    /optimize would otherwise change the repo's own program files), and is loaded back from there."""
    import app.settings as settings_module

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    bundled = settings_module.PACKAGE_DIR / "programs"
    before = sorted(p.name for p in bundled.iterdir())
    async with gateway(sim_url) as gw:
        v2 = await save(gw.state.programs)
    saved = tmp_path / "data" / "vgate" / "programs" / "sentiment@2.json"
    assert v2.version == 2 and saved.is_file()
    assert sorted(p.name for p in bundled.iterdir()) == before
    async with gateway(sim_url) as gw:
        assert gw.state.programs.resolve("sentiment").version == 2
        assert gw.state.programs.resolve("sentiment@1").demos != DEMOS


async def test_program_versions_dir_says_where_versions_go(sim_url, programs_dir, tmp_path):
    versions = tmp_path / "versions"
    async with gateway(sim_url, programs_dir=programs_dir, program_versions_dir=versions) as gw:
        await save(gw.state.programs)
    assert (versions / "sentiment@2.json").is_file() and not (programs_dir / "sentiment@2.json").exists()
    async with gateway(sim_url, programs_dir=programs_dir, program_versions_dir=versions) as gw:
        assert gw.state.programs.resolve("sentiment").version == 2
