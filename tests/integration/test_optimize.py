"""POST /optimize against the simulator: bootstrapped demos that all pass the metric, saved as a new
version that /predict serves; random search keeping the best candidate; the budget; jobs; errors."""

from __future__ import annotations

import json

import pytest

from app.services.evaluation.metrics import exact_match
from tests.integration.test_evaluate import wait_job
from tests.support import gateway

SIG = "text -> label: Literal['a', 'b', 'c', 'd']"
PASSING = (0, 3, 4, 6, 8)  # the train examples whose expected label is the program's zero-shot answer


@pytest.fixture
def programs_dir(tmp_path):
    (tmp_path / "label.json").write_text(json.dumps({"name": "label", "signature": SIG,
                                                     "instructions": "Label the text.",
                                                     "config": {"temperature": 0}}))
    return tmp_path


async def datasets(gw) -> tuple[list[dict], list[dict]]:
    """A train set where exactly PASSING have the program's own answers as expected (the others a
    label it never gives), and a valset where half do."""
    texts = [{"text": f"support ticket number {i} about billing"} for i in range(16)]
    r = await gw.client.post("/predict", json={"program": "label", "batch": texts})
    labels = [item["outputs"]["label"] for item in r.json()["results"]]
    train = [{"inputs": texts[i], "outputs": {"label": labels[i] if i in PASSING else "none"}} for i in range(10)]
    val = [{"inputs": texts[i], "outputs": {"label": labels[i] if i % 2 else "a"}} for i in range(10, 16)]
    return train, val


async def score(gw, valset, **target) -> float:
    r = await gw.client.post("/evaluate", json={**target, "dataset": valset})
    assert r.status_code == 200, r.text
    return r.json()["score"]


async def test_bootstrap_few_shot_saves_a_version_whose_demos_all_pass(sim_url, programs_dir):
    async with gateway(sim_url, programs_dir=programs_dir) as gw:
        train, val = await datasets(gw)
        r = await gw.client.post("/optimize", json={"program": "label", "strategy": "bootstrap_few_shot",
                                                    "trainset": train, "valset": val, "k": 3})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["program"] == "label@2" and body["version"] == 2 and body["base"] == "label@1"
        # the first k passing train examples, in order: inputs plus the program's outputs
        assert [d["text"] for d in body["demos"]] == [train[i]["inputs"]["text"] for i in PASSING[:3]]
        by_text = {x["inputs"]["text"]: x for x in train}
        for demo in body["demos"]:  # each demo re-scored against its example: it passes the metric
            example = by_text[demo["text"]]
            assert exact_match(demo["label"], example["outputs"]["label"]) == 1.0
        assert body["score_before"] == await score(gw, val, program="label@1")
        assert body["score_after"] == await score(gw, val, program="label@2")
        assert body["score_after"] == await score(gw, val, program="label", version=1, demos=body["demos"])
        # scored before (6), bootstrapped one chunk of max(2k, 8) = 8, scored after (6)
        assert body["calls"] == 6 + 8 + 6 and body["trainset_run"] == 8 and body["bootstrapped"] == 3
        assert body["budget_exhausted"] is False and body["usage"]["total_tokens"] > 0 and body["cost_usd"] > 0
        assert "candidates" not in body
        saved = gw.state.programs.get("label", 2)
        assert saved.demos == body["demos"] and saved.instructions == "Label the text."
        served = await gw.client.post("/predict", json={"program": "label@2", "inputs": {"text": "a new ticket"}})
        inline = await gw.client.post("/predict", json={"program": "label@1", "demos": body["demos"],
                                                        "inputs": {"text": "a new ticket"}})
        newest = await gw.client.post("/predict", json={"program": "label", "inputs": {"text": "a new ticket"}})
    assert served.status_code == 200, served.text
    assert served.json()["program"] == "label@2" == newest.json()["program"]
    assert served.json()["outputs"] == inline.json()["outputs"]


async def test_random_search_keeps_the_best_candidate(sim_url, programs_dir):
    """The candidate sets depend only on the train set, k and the seed; a valset made of what the
    third candidate answers makes that one the best, and random search must pick it."""
    async with gateway(sim_url, programs_dir=programs_dir) as gw:
        train, val = await datasets(gw)
        request = {"program": "label", "version": 1, "strategy": "bootstrap_random_search", "trainset": train,
                   "valset": val, "k": 2, "candidates": 4, "seed": 7}
        first = await gw.client.post("/optimize", json=request)
        assert first.status_code == 200, first.text
        target = first.json()["candidates"][2]["demos"]
        r = await gw.client.post("/predict", json={"program": "label@1", "demos": target,
                                                   "batch": [x["inputs"] for x in val]})
        val = [{"inputs": x["inputs"], "outputs": item["outputs"]} for x, item in zip(val, r.json()["results"],
                                                                                       strict=True)]
        r = await gw.client.post("/optimize", json={**request, "valset": val})
        assert r.status_code == 200, r.text
        body = r.json()
        candidates = body["candidates"]
        assert [c["demos"] for c in candidates] == [c["demos"] for c in first.json()["candidates"]]  # the seed's
        assert [c["kind"] for c in candidates] == ["bootstrapped"] * 4 + ["zero_shot"]
        assert body["bootstrapped"] == len(PASSING) and body["trainset_run"] == 10
        pool = {train[i]["inputs"]["text"] for i in PASSING}
        for c in candidates:  # every candidate's score is what /evaluate gives its demos
            assert {d["text"] for d in c["demos"]} <= pool and len(c["demos"]) <= 2
            assert c["score"] == await score(gw, val, program="label@1", demos=c["demos"])
        assert len({json.dumps(c["demos"]) for c in candidates}) == 5  # distinct sets
        assert candidates[2]["score"] == 1.0 and body["score_before"] < 1.0
        assert body["score_after"] == 1.0 == max(c["score"] for c in candidates)
        assert body["demos"] == next(c["demos"] for c in candidates if c["score"] == 1.0)
        assert body["score_before"] == candidates[-1]["score"]  # the base has no demos: zero-shot is the base
        assert body["calls"] == 6 + 10 + 4 * 6  # the zero-shot candidate reused the base's scoring
        assert body["program"] == "label@3"
        assert gw.state.programs.get("label", 3).demos == body["demos"]


async def test_the_call_budget_stops_bootstrapping_and_keeps_the_final_scoring(sim_url, programs_dir):
    async with gateway(sim_url, programs_dir=programs_dir) as gw:
        train, val = await datasets(gw)
        base = {"program": "label", "version": 1, "trainset": train, "valset": val, "k": 3}
        small = await gw.client.post("/optimize", json={**base, "max_calls": 12})
        r = await gw.client.post("/optimize", json={**base, "max_calls": 13})
    assert small.status_code == 422 and small.json()["error"]["type"] == "budget_too_small"
    assert small.json()["error"]["minimum"] == 13
    body = r.json()
    assert r.status_code == 200, r.text
    assert body["budget_exhausted"] is True and body["calls"] == 13 and body["trainset_run"] == 1
    assert [d["text"] for d in body["demos"]] == [train[0]["inputs"]["text"]]  # example 0 passes
    assert body["program"] == "label@2"


async def test_the_cost_budget_stops_cleanly(sim_url, programs_dir):
    async with gateway(sim_url, programs_dir=programs_dir) as gw:
        train, val = await datasets(gw)
        r = await gw.client.post("/optimize", json={"program": "label", "trainset": train, "valset": val,
                                                    "max_cost_usd": 1e-9})
    body = r.json()
    assert r.status_code == 200, r.text
    assert body["budget_exhausted"] is True and body["trainset_run"] == 0 and body["demos"] == []
    assert body["calls"] == 6 and body["score_after"] == body["score_before"]  # no demos: the base, not rescored


async def test_teacher_model_and_job(sim_url, programs_dir):
    async with gateway(sim_url, programs_dir=programs_dir) as gw:
        train, val = await datasets(gw)
        unknown = await gw.client.post("/optimize", json={"program": "label", "trainset": train, "valset": val,
                                                          "teacher_model": "no-such-model"})
        r = await gw.client.post("/optimize", json={"program": "label", "trainset": train, "valset": val, "k": 2,
                                                    "teacher_model": "sim-model", "job": True})
        assert r.status_code == 202, r.text
        assert r.json()["kind"] == "optimize" and r.headers["location"] == f"/jobs/{r.json()['job_id']}"
        job = await wait_job(gw, r.headers["location"])
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "model_not_found"
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert result["program"] == "label@2" and result["teacher_model"] == "sim-model" and len(result["demos"]) == 2
    assert job["progress"]["done"] == result["calls"]


@pytest.mark.parametrize(("change", "status", "kind", "needle"), [
    ({"metric": "bogus"}, 422, "invalid_metric", "unknown metric 'bogus'"),
    ({"trainset": [{"inputs": {"txt": "x"}, "outputs": {"label": "a"}}]}, 422, "invalid_example", "trainset[0]:"),
    ({"valset": [{"inputs": {"text": "x"}, "outputs": {"lbl": "a"}}]}, 422, "invalid_example", "valset[0]:"),
    ({"program": "nope"}, 404, "program_not_found", "unknown program"),
    ({"strategy": "mipro"}, 422, "invalid_request", "strategy"),
])
async def test_bad_requests(sim_url, programs_dir, change, status, kind, needle):
    example = {"inputs": {"text": "x"}, "outputs": {"label": "a"}}
    async with gateway(sim_url, programs_dir=programs_dir) as gw:
        r = await gw.client.post("/optimize", json={"program": "label", "trainset": [example], "valset": [example],
                                                    **change})
    assert r.status_code == status, r.text
    assert r.json()["error"]["type"] == kind and needle in r.json()["error"]["message"]


async def test_optimize_needs_the_admin_scope(sim_url, programs_dir):
    keys = [{"id": "app", "key": "vg-" + "a" * 29, "scopes": ["predict"]},
            {"id": "ops", "key": "vg-" + "b" * 29, "scopes": ["admin"]}]
    example = {"inputs": {"text": "x"}, "outputs": {"label": "a"}}
    body = {"program": "label", "trainset": [example], "valset": [example]}
    async with gateway(sim_url, programs_dir=programs_dir, api_keys=keys) as gw:
        app = await gw.client.post("/optimize", json=body, headers={"authorization": "Bearer vg-" + "a" * 29})
        ops = await gw.client.post("/optimize", json=body, headers={"authorization": "Bearer vg-" + "b" * 29})
    assert app.status_code == 403 and app.json()["error"]["type"] == "scope_missing"
    assert ops.status_code == 200, ops.text


async def test_a_multi_step_program_is_refused(sim_url):
    example = {"inputs": {"question": "why?"}, "outputs": {"answer": "because"}}
    async with gateway(sim_url) as gw:
        r = await gw.client.post("/optimize", json={"program": "research_answer", "trainset": [example],
                                                    "valset": [example]})
    assert r.status_code == 422 and r.json()["error"]["type"] == "unsupported_program"
    assert "single-step programs only" in r.json()["error"]["message"]


async def test_without_a_valset_the_trainset_scores_and_overrides_are_kept(sim_url, programs_dir):
    async with gateway(sim_url, programs_dir=programs_dir) as gw:
        train, _ = await datasets(gw)
        r = await gw.client.post("/optimize", json={"program": "label", "trainset": train[:4], "k": 1,
                                                    "model": "sim-model", "config": {"max_tokens": 50}})
        assert r.status_code == 200, r.text
        body = r.json()
        saved = gw.state.programs.get("label", 2)
        assert body["score_before"] == await score(gw, train[:4], program="label@1", config={"max_tokens": 50})
    assert body["calls"] == 4 + 4 + 4  # the trainset scored before and after, bootstrapped in one chunk
    assert saved.config.max_tokens == 50 and saved.config.temperature == 0 and saved.model == "sim-model"


async def test_with_redis_a_job_and_its_new_version_reach_another_replica(sim_url, programs_dir, redis_clean):
    """Two gateways sharing Redis: an optimization run as a job on one is followed on the other, and
    the version it saved is served there."""
    async with gateway(sim_url, programs_dir=programs_dir, redis_url=redis_clean) as a, \
            gateway(sim_url, programs_dir=programs_dir, redis_url=redis_clean) as b:
        train, val = await datasets(a)
        r = await a.client.post("/optimize", json={"program": "label", "trainset": train, "valset": val, "k": 2,
                                                   "job": True})
        assert r.status_code == 202, r.text
        job = await wait_job(b, r.headers["location"])
        assert job["status"] == "succeeded", job
        assert job["result"]["program"] == "label@2"
        served = await b.client.post("/predict", json={"program": "label@2", "inputs": {"text": "a new ticket"}})
        evaluated = await b.client.post("/evaluate", json={"program": "label@2", "dataset": val})
    assert served.status_code == 200, served.text
    assert evaluated.json()["score"] == job["result"]["score_after"]
