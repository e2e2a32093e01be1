"""evaluate and optimize through the real gateway and the simulator (needs /evaluate, /optimize and
/jobs: the evaluate and jobs branches). The simulator answers a prompt deterministically, so a
dataset whose expected outputs are the program's own answers for half of the examples, and wrong
for the other half, must score exactly 0.5."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import vgate

from tests.support import ROOT, live_gateway


@pytest.fixture(scope="module")
def programs_gateway(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway whose programs directory is a copy of app/programs: optimize saves new versions there."""
    programs = tmp_path_factory.mktemp("programs")
    shutil.copytree(Path(ROOT, "app", "programs"), programs, dirs_exist_ok=True)
    with live_gateway(sim_url, programs_dir=programs) as (url, _app):
        yield url


@pytest.fixture
def configured(programs_gateway: str) -> str:
    vgate.configure(base_url=programs_gateway)
    return programs_gateway

TEXTS = ["I love it", "Awful service", "It was fine", "Never again", "Great food", "Too slow"]
OTHER = {"positive": "negative", "negative": "neutral", "neutral": "positive"}


def known_dataset() -> list[dict]:
    program = vgate.Program("sentiment")
    dataset = []
    for i, text in enumerate(TEXTS):
        answer = program(text=text).sentiment
        dataset.append({"inputs": {"text": text}, "outputs": {"sentiment": answer if i % 2 == 0 else OTHER[answer]}})
    return dataset


def test_an_evaluation_gives_the_exact_score(configured):
    result = vgate.evaluate("sentiment", known_dataset(), {"sentiment": "exact_match"})
    assert isinstance(result, vgate.EvaluationResult)
    assert result.score == 0.5 and result.scores["sentiment"] == 0.5
    assert result.count == len(TEXTS) and result.failed == 0
    assert [r.score for r in result.results] == [1.0, 0.0] * 3
    assert [r.index for r in result.results] == list(range(len(TEXTS)))
    assert result.usage.total_tokens > 0 and result.cost_usd > 0


def test_an_inline_signature_and_a_predict_module(configured):
    dataset = [{"inputs": {"question": q}, "outputs": {"answer": 1}} for q in ("a", "b")]
    for program in ("question -> answer: int", vgate.Predict("question -> answer: int", temperature=0)):
        result = vgate.evaluate(program, dataset, {"name": "numeric", "tolerance": 1000})
        assert result.count == 2 and result.score == 1.0


def test_an_evaluation_as_a_job(configured):
    dataset = known_dataset()
    progress: list[dict] = []
    result = vgate.evaluate("sentiment", dataset, "exact_match", job=True, on_progress=progress.append, timeout=60)
    assert result.score == 0.5 and progress
    job = vgate.evaluate("sentiment", dataset, "exact_match", wait=False)
    assert isinstance(job, vgate.Job) and job.id.startswith("job_")
    events = list(job.events())
    assert events[-1]["event"] == "result" and {e["event"] for e in events[:-1]} <= {"progress"}
    assert job.wait(timeout=60).score == 0.5 and job.status == "succeeded"


async def test_aevaluate(configured):
    result = await vgate.aevaluate("sentiment", [{"inputs": {"text": "ok"}, "outputs": {"sentiment": "neutral"}}],
                                   "exact_match")
    assert result.count == 1 and result.score in (0.0, 1.0)


def test_a_bad_dataset_is_an_invalid_request(configured):
    with pytest.raises(vgate.InvalidRequest):
        vgate.evaluate("sentiment", [{"inputs": {"text": "x"}}], "no_such_metric")
    with pytest.raises(vgate.NotFound):
        vgate.evaluate("no_such_program", [{"inputs": {"text": "x"}, "outputs": {"sentiment": "neutral"}}])


def test_an_optimization_makes_a_new_version_whose_demos_pass_the_metric(configured):
    trainset = known_dataset()
    result = vgate.optimize("sentiment", "bootstrap_few_shot", trainset=trainset, valset=trainset,
                            metric={"sentiment": "exact_match"}, k=2, timeout=120)
    assert isinstance(result, vgate.OptimizationResult)
    assert result.program.startswith("sentiment@") and result.version and result.version >= 2
    assert 0 < len(result.demos) <= 2
    passing = {e["inputs"]["text"]: e["outputs"]["sentiment"] for e in trainset[::2]}
    assert all(passing.get(d.get("text")) == d.get("sentiment") for d in result.demos)
    assert result.score_before is not None and result.score_after is not None
    assert result.cost_usd > 0
    improved = result.as_program()
    assert improved(text="I love it").raw["program"] == result.program
    versions = vgate.Program("sentiment").info()
    assert result.version in [v["version"] for v in versions.get("versions", [])]


async def test_aoptimize_as_a_job(configured):
    trainset = [{"inputs": {"text": "I love it"}, "outputs": {"sentiment": "positive"}}]
    job = await vgate.aoptimize("sentiment", trainset=trainset, metric="exact_match", k=1, wait=False)
    assert isinstance(job, vgate.AsyncJob)
    result = await job.wait(timeout=120)
    assert isinstance(result, vgate.OptimizationResult) and result.program.startswith("sentiment@")
