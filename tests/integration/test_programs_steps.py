"""Multi-step programs through /predict against the simulator: research_answer end to end (every
step in the trace, the map once per sub-question, usage the sum of the steps and what the simulator
counted), batches, step failures, parallel steps, and the overrides a multi-step program refuses."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from tests.support import gateway, sim_reset, sim_stats

QUESTION = {"question": "Why did the Roman Empire fall, and how long did it take?"}

SIGNATURE = "question: str -> answer: str, supported: bool, issues: list[str], sub_questions: list[str]"


def usage_sum(entries: list[dict]) -> dict:
    total = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for e in entries:
        for k in total:
            total[k] += e["usage"][k]
    return total


async def test_research_answer_end_to_end(sim_url):
    async with gateway(sim_url) as gw:
        await sim_reset(sim_url)
        r = await gw.client.post("/predict", json={"program": "research_answer", "inputs": QUESTION})
        stats = await sim_stats(sim_url)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["program"] == "research_answer" and body["module"] == "steps"
    assert body["signature"] == SIGNATURE
    out = body["outputs"]
    assert isinstance(out["answer"], str) and isinstance(out["supported"], bool)
    trace = {step["name"]: step for step in body["trace"]}
    assert list(trace) == ["plan", "answer", "synthesize", "verify"]
    questions = trace["plan"]["outputs"]["questions"]
    assert out["sub_questions"] == questions and questions
    mapped = trace["answer"]
    assert mapped["map"] == "question" and len(mapped["items"]) == len(questions)  # once per sub-question
    assert [i["inputs"]["question"] for i in mapped["items"]] == questions
    assert mapped["outputs"]["answer"] == [i["outputs"]["answer"] for i in mapped["items"]]
    assert mapped["usage"] == usage_sum(mapped["items"])
    assert trace["synthesize"]["inputs"] == {"question": QUESTION["question"], "sub_questions": questions,
                                             "sub_answers": mapped["outputs"]["answer"]}
    assert trace["verify"]["inputs"]["answer"] == out["answer"] == trace["synthesize"]["outputs"]["answer"]
    assert out["supported"] == trace["verify"]["outputs"]["supported"]
    for step in body["trace"]:
        assert step["latency_ms"] >= 0 and step["model"] == "sim-model"
    assert body["usage"] == usage_sum(body["trace"])
    assert body["cost_usd"] == pytest.approx(sum(s["cost_usd"] for s in body["trace"]))
    assert body["model"] == "sim-model"
    # what the simulator counted: one request per step, one per mapped item, and exactly these tokens
    assert stats["requests_total"] == 3 + len(questions)
    assert stats["prompt_tokens_total"] == body["usage"]["prompt_tokens"]
    assert stats["generation_tokens_total"] == body["usage"]["completion_tokens"]


async def test_a_batch_runs_the_program_per_item_and_items_fail_alone(sim_url):
    async with gateway(sim_url) as gw:
        r = await gw.client.post("/predict", json={"program": "research_answer",
                                                   "batch": [QUESTION, {"query": "wrong field"}, QUESTION]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["succeeded"] == 2 and body["failed"] == 1 and body["module"] == "steps"
    ok = [x for x in body["results"] if "error" not in x]
    assert [x["index"] for x in ok] == [0, 2]
    assert all([s["name"] for s in x["trace"]] == ["plan", "answer", "synthesize", "verify"] for x in ok)
    assert body["results"][1]["error"]["type"] == "invalid_request"
    assert body["usage"] == usage_sum(ok)


async def test_a_failing_step_fails_the_request_naming_it(sim_url):
    async with gateway(sim_url) as gw:
        unknown = await gw.client.post("/predict", json={"program": "research_answer", "inputs": QUESTION,
                                                         "model": "no-such-model"})
        cut = await gw.client.post("/predict", json={"program": "research_answer", "inputs": QUESTION,
                                                     "config": {"max_tokens": 1, "repair": 0}})
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["error"]["type"] == "model_not_found" and unknown.json()["error"]["step"] == "plan"
    assert cut.status_code == 502, cut.text
    err = cut.json()["error"]
    assert err["step"] == "plan" and err["type"] in ("output_truncated", "output_validation_error")


@pytest.mark.parametrize("override", [{"module": "chain_of_thought"}, {"demos": []},
                                      {"instructions": "be brief"}])
async def test_overrides_that_belong_to_the_steps_are_422(sim_url, override):
    async with gateway(sim_url) as gw:
        r = await gw.client.post("/predict", json={"program": "research_answer", "inputs": QUESTION, **override})
    assert r.status_code == 422, r.text
    assert "cannot be overridden" in r.json()["error"]["message"]


async def test_inputs_are_checked_before_any_step_runs(sim_url):
    async with gateway(sim_url) as gw:
        await sim_reset(sim_url)
        r = await gw.client.post("/predict", json={"program": "research_answer", "inputs": {"question": 3}})
        assert (await sim_stats(sim_url))["requests_total"] == 0
    assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_request"


def programs_dir(tmp_path: Path, *programs: dict) -> Path:
    for name in ("qa.json", "sentiment.json"):
        shutil.copy(Path("app/programs") / name, tmp_path / name)
    for p in programs:
        (tmp_path / f"{p['name']}.json").write_text(json.dumps(p))
    return tmp_path


FAN = {
    "name": "fan",
    "inputs": {"text": "str"},
    "outputs": {"a": "left.y", "b": "right.y", "both": "join.total", "sent": "mood.sentiment"},
    "steps": [
        {"name": "join", "signature": "x: int, y: int -> total: int", "inputs": {"x": "left.y", "y": "right.y"}},
        {"name": "left", "signature": "x -> y: int", "inputs": {"x": "inputs.text"}},
        {"name": "right", "signature": "x -> y: int", "inputs": {"x": "inputs.text"}},
        {"name": "mood", "program": "sentiment", "inputs": {"text": "inputs.text"}},
    ],
}


async def test_independent_steps_run_at_once_and_a_program_step_runs_that_program(sim_slow_url, tmp_path):
    async with gateway(sim_slow_url, programs_dir=programs_dir(tmp_path, FAN)) as gw:
        await sim_reset(sim_slow_url)
        r = await gw.client.post("/predict", json={"program": "fan", "inputs": {"text": "hello"}})
        stats = await sim_stats(sim_slow_url)
    assert r.status_code == 200, r.text
    body = r.json()
    trace = {s["name"]: s for s in body["trace"]}
    assert [s["name"] for s in body["trace"]] == ["join", "left", "right", "mood"]  # as declared
    assert trace["join"]["inputs"] == {"x": body["outputs"]["a"], "y": body["outputs"]["b"]}
    assert body["outputs"]["sent"] in ("positive", "negative", "neutral")
    assert stats["peak_num_requests_running"] >= 3  # left, right and mood together; join after them
    assert stats["requests_total"] == 4


async def test_a_mapped_step_runs_its_items_concurrently_and_an_empty_list_runs_none(sim_slow_url, tmp_path):
    each = {"name": "each", "inputs": {"texts": "list[str]"}, "outputs": {"moods": "m.sentiment"},
            "steps": [{"name": "m", "program": "sentiment", "map": "text", "inputs": {"text": "inputs.texts"}}]}
    async with gateway(sim_slow_url, programs_dir=programs_dir(tmp_path, each)) as gw:
        await sim_reset(sim_slow_url)
        r = await gw.client.post("/predict", json={"program": "each", "inputs": {"texts": ["a", "b", "c", "d"]}})
        stats = await sim_stats(sim_slow_url)
        empty = await gw.client.post("/predict", json={"program": "each", "inputs": {"texts": []}})
    assert r.status_code == 200, r.text
    assert len(r.json()["outputs"]["moods"]) == 4 and stats["peak_num_requests_running"] == 4
    assert empty.status_code == 200 and empty.json()["outputs"] == {"moods": []}
    assert empty.json()["usage"]["total_tokens"] == 0


async def test_programs_list_shows_steps(sim_url):
    async with gateway(sim_url) as gw:
        listed = {p["name"]: p for p in (await gw.client.get("/predict/programs")).json()["programs"]}
    assert listed["research_answer"]["steps"] == ["plan", "answer", "synthesize", "verify"]
    assert listed["research_answer"]["module"] == "steps" and "steps" not in listed["qa"]


async def test_a_failing_step_cancels_the_steps_still_running(sim_slow_url, tmp_path):
    broken = {"name": "broken", "inputs": {"text": "str"}, "outputs": {"a": "slow.y", "b": "bad.y"},
              "steps": [{"name": "slow", "signature": "x -> y: list[str]", "inputs": {"x": "inputs.text"}},
                        {"name": "bad", "signature": "x -> y", "model": "no-such-model",
                         "inputs": {"x": "inputs.text"}}]}
    async with gateway(sim_slow_url, programs_dir=programs_dir(tmp_path, broken)) as gw:
        await sim_reset(sim_slow_url)
        r = await gw.client.post("/predict", json={"program": "broken", "inputs": {"text": "hello"}})
        for _ in range(100):  # the cancelled call leaves the simulator within moments
            stats = await sim_stats(sim_slow_url)
            if stats["num_requests_running"] == 0:
                break
            await asyncio.sleep(0.02)
    assert r.status_code == 404 and r.json()["error"]["step"] == "bad"
    # slow was cut short (in the simulator, or before it got there), not left to finish
    assert stats["requests_total"] == stats["requests_aborted_total"] <= 1
    assert stats["request_success_total"]["stop"] == stats["request_success_total"]["length"] == 0


async def test_a_program_step_may_run_a_multi_step_program_and_its_errors_name_the_path(sim_url, tmp_path):
    each = {"name": "each", "inputs": {"texts": "list[str]"}, "outputs": {"moods": "m.sentiment"},
            "steps": [{"name": "m", "program": "sentiment", "map": "text", "inputs": {"text": "inputs.texts"}}]}
    outer = {"name": "outer", "inputs": {"texts": "list[str]"}, "outputs": {"moods": "inner.moods"},
             "steps": [{"name": "inner", "program": "each", "inputs": {"texts": "inputs.texts"}}]}
    async with gateway(sim_url, programs_dir=programs_dir(tmp_path, each, outer)) as gw:
        ok = await gw.client.post("/predict", json={"program": "outer", "inputs": {"texts": ["a", "b"]}})
        bad = await gw.client.post("/predict", json={"program": "outer", "inputs": {"texts": ["a"]},
                                                     "model": "no-such-model"})
    assert ok.status_code == 200, ok.text
    step = ok.json()["trace"][0]
    assert step["program"] == "each" and step["trace"][0]["name"] == "m" and len(step["trace"][0]["items"]) == 2
    assert ok.json()["usage"] == step["usage"] == step["trace"][0]["usage"]
    assert bad.status_code == 404 and bad.json()["error"]["step"] == "inner/m" and bad.json()["error"]["item"] == 0
