"""evaluate and optimize against the contract (CONTRACTS.md, "Contract to be built by evaluate"),
with a mock gateway: the 200 path, the 202 path (a job, waited for), wait=False (a Job handle),
failed jobs, and the request bodies. The live tests are in test_evaluate_live.py."""

from __future__ import annotations

import json

import httpx
import pytest
import vgate

USAGE = {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
EVALUATION = {"score": 0.5, "scores": {"answer": 0.5}, "count": 2, "failed": 0, "usage": USAGE, "cost_usd": 0.01,
              "latency_ms": 12.0, "results": [
                  {"index": 0, "inputs": {"q": "1+1"}, "prediction": {"answer": 2}, "expected": {"answer": 2},
                   "score": 1.0, "scores": {"answer": 1.0}},
                  {"index": 1, "inputs": {"q": "2+2"}, "prediction": {"answer": 5}, "expected": {"answer": 4},
                   "score": 0.0, "scores": {"answer": 0.0}}]}
OPTIMIZATION = {"program": "math@2", "version": 2, "demos": [{"q": "1+1", "answer": 2}], "score_before": 0.25,
                "score_after": 0.75, "usage": USAGE, "cost_usd": 0.02, "calls": 9}
DATASET = [{"inputs": {"q": "1+1"}, "outputs": {"answer": 2}}, {"inputs": {"q": "2+2"}, "outputs": {"answer": 4}}]
JOB = "job_" + "a" * 32


class MockGateway:
    """POST answers 200 with ``result``, or 202 with a job that is running for ``polls`` reads."""

    def __init__(self, result: dict, *, job: bool = False, polls: int = 2, fail: dict | None = None) -> None:
        self.result, self.job, self.polls, self.fail = result, job, polls, fail
        self.requests: list[httpx.Request] = []
        self.reads = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.method == "POST":
            if self.job or json.loads(request.content).get("job"):
                return httpx.Response(202, json={"job_id": JOB, "status": "queued", "kind": self.kind(request)},
                                      headers={"location": f"/jobs/{JOB}"})
            return httpx.Response(200, json=self.result)
        if request.url.path == f"/jobs/{JOB}" and request.method == "GET":
            self.reads += 1
            state = {"job_id": JOB, "kind": "evaluate", "created_at": 1.0, "progress": {"done": self.reads,
                                                                                        "total": 3}}
            if self.reads <= self.polls:
                return httpx.Response(200, json={**state, "status": "running"})
            if self.fail:
                return httpx.Response(200, json={**state, "status": "failed", "error": self.fail})
            return httpx.Response(200, json={**state, "status": "succeeded", "result": self.result})
        if request.url.path == f"/jobs/{JOB}/events":
            body = (f"id: 1\nevent: progress\ndata: {json.dumps({'done': 1, 'total': 2})}\n\n"
                    f": ping\n\nid: 2\nevent: result\ndata: {json.dumps(self.result)}\n\n")
            return httpx.Response(200, content=body.encode(), headers={"content-type": "text/event-stream"})
        return httpx.Response(404, json={"error": {"type": "not_found", "message": "no"}})

    @staticmethod
    def kind(request: httpx.Request) -> str:
        return request.url.path.strip("/")

    def client(self) -> vgate.Client:
        return vgate.Client("http://gw", transport=httpx.MockTransport(self))

    def async_client(self) -> vgate.AsyncClient:
        return vgate.AsyncClient("http://gw", transport=httpx.MockTransport(self))

    def body(self, i: int = 0) -> dict:
        return json.loads(self.requests[i].content)


def test_evaluate_answered_at_once():
    gw = MockGateway(EVALUATION)
    result = vgate.evaluate("math", DATASET, "exact_match", client=gw.client())
    assert isinstance(result, vgate.EvaluationResult)
    assert result.score == 0.5 and result.scores == {"answer": 0.5} and result.count == 2
    assert result.results[1].expected == {"answer": 4} and result.results[1].score == 0.0
    assert result.usage.total_tokens == 12 and result.cost_usd == 0.01 and result.raw == EVALUATION
    assert gw.body() == {"program": "math", "dataset": DATASET, "metric": "exact_match"}


def test_evaluate_as_a_job_is_waited_for():
    gw = MockGateway(EVALUATION, job=True, polls=2)
    progress: list[dict] = []
    result = vgate.evaluate("math", DATASET, client=gw.client(), on_progress=progress.append)
    assert isinstance(result, vgate.EvaluationResult) and result.score == 0.5
    assert gw.reads == 3 and progress[-1] == {"done": 3, "total": 3}


def test_wait_false_asks_for_a_job_and_returns_its_handle():
    gw = MockGateway(EVALUATION)
    job = vgate.evaluate("math", DATASET, client=gw.client(), wait=False)
    assert isinstance(job, vgate.Job) and job.id == JOB and job.status == "queued"
    assert gw.body()["job"] is True
    events = list(job.events())
    assert [e["event"] for e in events] == ["progress", "result"] and events[1]["score"] == 0.5
    assert job.wait().score == 0.5 and job.status == "succeeded" and job.done
    again = vgate.get_job(JOB, client=gw.client())
    assert again.status == "succeeded" and isinstance(again.wait(), vgate.EvaluationResult)


def test_a_failed_job_raises_its_error():
    error = {"type": "upstream_unavailable", "message": "the upstream is down", "retryable": True}
    gw = MockGateway(EVALUATION, job=True, polls=0, fail=error)
    with pytest.raises(vgate.JobFailed) as info:
        vgate.evaluate("math", DATASET, client=gw.client())
    assert info.value.type == "upstream_unavailable" and info.value.job_id == JOB
    assert info.value.job_status == "failed" and info.value.error == error


def test_a_job_that_outlasts_the_timeout():
    gw = MockGateway(EVALUATION, job=True, polls=10**6)
    with pytest.raises(TimeoutError):
        vgate.evaluate("math", DATASET, client=gw.client(), timeout=0.3)


def test_what_to_evaluate():
    gw = MockGateway(EVALUATION)
    client = gw.client()
    vgate.evaluate("q -> answer: int", DATASET, {"answer": {"name": "numeric", "tolerance": 0.5}}, client=client)
    assert gw.body(0)["signature"] == "q -> answer: int"
    assert gw.body(0)["metric"] == {"answer": {"name": "numeric", "tolerance": 0.5}}
    vgate.evaluate(vgate.ChainOfThought("q -> answer: int", instructions="Add.", temperature=0, client=client),
                   DATASET, "numeric", model="m", config={"max_tokens": 9}, job=False)
    assert gw.body(1) == {"signature": "q -> answer: int", "module": "chain_of_thought", "instructions": "Add.",
                          "config": {"temperature": 0, "max_tokens": 9}, "model": "m", "dataset": DATASET,
                          "metric": "numeric", "job": False}
    vgate.evaluate(vgate.Program("math", version=3, client=client), DATASET)
    assert gw.body(2)["program"] == "math@3"
    vgate.evaluate("math", DATASET, version=2, client=client)
    assert gw.body(3)["version"] == 2
    with pytest.raises(TypeError, match="metrics run on the gateway"):
        vgate.evaluate("math", DATASET, lambda example, pred: 1.0, client=client)
    with pytest.raises(TypeError, match="list of examples"):
        vgate.evaluate("math", {"inputs": {}}, client=client)


def test_optimize_answered_at_once_and_as_a_job():
    gw = MockGateway(OPTIMIZATION)
    result = vgate.optimize("math", "bootstrap_random_search", DATASET, DATASET[:1], "exact_match", 2,
                            candidates=3, max_calls=50, max_cost_usd=0.5, client=gw.client())
    assert isinstance(result, vgate.OptimizationResult)
    assert (result.program, result.version, result.score_before, result.score_after) == ("math@2", 2, 0.25, 0.75)
    assert result.demos == [{"q": "1+1", "answer": 2}] and result.calls == 9
    assert gw.body() == {"program": "math", "strategy": "bootstrap_random_search", "trainset": DATASET,
                         "valset": DATASET[:1], "metric": "exact_match", "k": 2, "candidates": 3, "max_calls": 50,
                         "max_cost_usd": 0.5}
    program = result.as_program()
    assert isinstance(program, vgate.Program) and program.name == "math@2"
    gw = MockGateway(OPTIMIZATION, job=True, polls=1)
    assert vgate.optimize(vgate.Program("math"), trainset=DATASET, client=gw.client()).program == "math@2"
    with pytest.raises(TypeError, match="named program"):
        vgate.optimize("q -> a", trainset=DATASET, client=gw.client())


async def test_the_async_forms():
    gw = MockGateway(EVALUATION, job=True, polls=1)
    assert (await vgate.aevaluate("math", DATASET, client=gw.async_client())).score == 0.5
    job = await vgate.aevaluate("math", DATASET, client=gw.async_client(), wait=False)
    assert isinstance(job, vgate.AsyncJob)
    assert [e["event"] async for e in job.events()] == ["progress", "result"]
    assert (await job.wait()).count == 2
    gw = MockGateway(OPTIMIZATION)
    assert (await vgate.aoptimize("math", trainset=DATASET, client=gw.async_client())).version == 2


class EndsEarly:
    """A job's event stream that ends after its first event without the last one (the gateway does
    so when Redis fails mid-stream), then answers the resumed request from Last-Event-ID."""

    def __init__(self) -> None:
        self.last_ids: list[str | None] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        last = request.headers.get("last-event-id")
        self.last_ids.append(last)
        if last is None:
            body = f"id: 1\nevent: progress\ndata: {json.dumps({'done': 1, 'total': 2})}\n\n"
        else:
            body = (f"id: 1\nevent: progress\ndata: {json.dumps({'done': 1, 'total': 2})}\n\n"
                    f"id: 2\nevent: result\ndata: {json.dumps(EVALUATION)}\n\n")
        return httpx.Response(200, content=body.encode(), headers={"content-type": "text/event-stream"})


def test_job_events_resume_a_stream_that_ends_before_the_last_event():
    gw = EndsEarly()
    job = vgate.Job(vgate.Client("http://gw", transport=httpx.MockTransport(gw)), JOB, "evaluate")
    events = list(job.events())
    assert [(e["event"], e["id"]) for e in events] == [("progress", 1), ("result", 2)]
    assert gw.last_ids == [None, "1"]


async def test_async_job_events_resume_a_stream_that_ends_before_the_last_event():
    gw = EndsEarly()
    job = vgate.AsyncJob(vgate.AsyncClient("http://gw", transport=httpx.MockTransport(gw)), JOB, "evaluate")
    events = [e async for e in job.events()]
    assert [(e["event"], e["id"]) for e in events] == [("progress", 1), ("result", 2)]
    assert gw.last_ids == [None, "1"]


def test_job_events_give_up_on_a_stream_that_keeps_ending_early():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b": ping\n\n", headers={"content-type": "text/event-stream"})

    job = vgate.Job(vgate.Client("http://gw", transport=httpx.MockTransport(handler)), JOB, "evaluate")
    with pytest.raises(vgate.ConnectionError):
        list(job.events())
