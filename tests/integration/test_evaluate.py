"""POST /evaluate against the simulator: exact scores on datasets whose answers are known, every
metric through the API, failed examples, the 422s, and the job path."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from app.services.evaluation.metrics import normalize_text
from tests.support import completion_chunks, gateway

SIG = "question -> answer: int, note: str"


async def predictions(gw, signature: str, inputs: list[dict], **kw) -> list[dict]:
    r = await gw.client.post("/predict", json={"signature": signature, "batch": inputs, **kw})
    assert r.status_code == 200, r.text
    return [item["outputs"] for item in r.json()["results"]]


async def wait_job(gw, location: str, timeout: float = 20) -> dict:
    for _ in range(int(timeout / 0.05)):
        job = (await gw.client.get(location)).json()
        if job["status"] not in ("queued", "running"):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {location} did not finish: {job}")


async def test_score_is_exactly_k_of_n_with_per_field_scores(sim_url):
    """The simulator is deterministic: its answers are known in advance through /predict, so a
    dataset where exactly 7 of 10 answers and 4 of 10 notes are right scores exactly that."""
    inputs = [{"question": f"What is {i} times 3?"} for i in range(10)]
    async with gateway(sim_url) as gw:
        preds = await predictions(gw, SIG, inputs)
        dataset = []
        for i, (x, p) in enumerate(zip(inputs, preds, strict=True)):
            answer = p["answer"] if i < 7 else p["answer"] + 1
            note = f"  {p['note'].upper()}!" if i % 3 == 0 else p["note"] if i < 4 else "wrong note"
            dataset.append({"inputs": x, "outputs": {"answer": answer, "note": note}})
        metric = {"answer": "exact_match", "note": "normalized_match"}
        r = await gw.client.post("/evaluate", json={"signature": SIG, "dataset": dataset, "metric": metric})
    assert r.status_code == 200, r.text
    body = r.json()
    note_right = [i % 3 == 0 or i < 4 for i in range(10)]  # 0, 1, 2, 3, 6, 9
    assert body["scores"] == {"answer": 7 / 10, "note": sum(note_right) / 10}
    expected_scores = [((i < 7) + note_right[i]) / 2 for i in range(10)]
    assert body["score"] == pytest.approx(sum(expected_scores) / 10, abs=1e-12)
    assert body["count"] == 10 and body["failed"] == 0 and body["metric"] == metric
    assert [x["index"] for x in body["results"]] == list(range(10))
    for i, item in enumerate(body["results"]):
        assert item["prediction"] == preds[i] and item["inputs"] == inputs[i]
        assert item["expected"] == dataset[i]["outputs"]
        assert item["scores"] == {"answer": float(i < 7), "note": float(note_right[i])}
        assert item["score"] == expected_scores[i] and "error" not in item
    assert body["usage"]["prompt_tokens"] > 0 and body["cost_usd"] > 0 and body["latency_ms"] > 0
    assert body["model"] == "sim-model" and "program" not in body


async def test_one_metric_for_every_field_and_k_of_n_exact(sim_url):
    inputs = [{"question": f"Q{i}?"} for i in range(8)]
    async with gateway(sim_url) as gw:
        preds = await predictions(gw, "question -> answer: int", inputs)
        dataset = [{"inputs": x, "outputs": {"answer": p["answer"] if i in (1, 4, 5) else -1}}
                   for i, (x, p) in enumerate(zip(inputs, preds, strict=True))]
        r = await gw.client.post("/evaluate", json={"signature": "question -> answer: int", "dataset": dataset})
        batch = gw.metric("vgate_queue_seconds_count", model="sim-model", priority="batch")
    assert r.status_code == 200, r.text
    assert r.json()["score"] == 3 / 8 and r.json()["scores"] == {"answer": 3 / 8}
    assert r.json()["metric"] == "exact_match"
    assert batch == 8 + 8  # the /predict batch and the evaluation: all at batch priority


async def test_every_metric_through_the_api(sim_url):
    x = {"question": "Which city hosts the tower?"}
    sig = "question -> city: str, count: float, data: dict[str, int]"
    async with gateway(sim_url) as gw:
        [p] = await predictions(gw, sig, [x])
        words = normalize_text(p["city"]).split()

        async def score(metric, outputs) -> float:
            r = await gw.client.post("/evaluate", json={"signature": sig, "metric": metric,
                                                        "dataset": [{"inputs": x, "outputs": outputs}]})
            assert r.status_code == 200, r.text
            return r.json()["score"]

        assert await score("exact_match", {"city": p["city"], "count": p["count"]}) == 1.0
        assert await score("normalized_match", {"city": f"The {p['city'].upper()}."}) == 1.0
        assert await score("exact_match", {"city": f"The {p['city'].upper()}."}) == 0.0
        assert await score("contains", {"city": words[-1]}) == 1.0
        assert await score("contains", {"city": words[-1] + "zzz"}) == 0.0
        assert await score({"name": "numeric", "tolerance": 0.5}, {"count": p["count"] + 0.4}) == 1.0
        assert await score({"name": "numeric", "tolerance": 0.3}, {"count": str(p["count"] + 0.4)}) == 0.0
        assert await score({"name": "numeric", "relative": 1.0}, {"count": p["count"] * 1.5}) == 1.0
        n = len(words)  # one extra gold token: precision 1, recall n/(n+1)
        assert await score("token_f1", {"city": p["city"] + " zzz"}) == pytest.approx(2 * n / (2 * n + 1))
        reordered = dict(reversed(list(p["data"].items())))
        assert await score("json_equal", {"data": reordered}) == 1.0
        assert await score("json_equal", {"data": json.dumps(reordered)}) == 1.0
        assert await score("json_equal", {"data": {**p["data"], "extra": 1}}) == 0.0
        assert await score("one_of", {"city": ["nowhere", p["city"].lower()]}) == 1.0
        assert await score("one_of", {"city": ["nowhere"]}) == 0.0


async def test_a_named_program_by_version(sim_url, tmp_path):
    (tmp_path / "label.json").write_text(json.dumps(
        {"name": "label", "signature": "text -> label: Literal['a', 'b', 'c']", "config": {"temperature": 0}}))
    (tmp_path / "label2.json").write_text(json.dumps(
        {"name": "label", "version": 2, "signature": "text -> label: Literal['a', 'b', 'c']",
         "demos": [{"text": "an example", "label": "b"}]}))
    inputs = [{"text": f"item {i}"} for i in range(5)]
    async with gateway(sim_url, programs_dir=tmp_path) as gw:
        outs = {}
        for ref in ("label@1", "label"):
            r = await gw.client.post("/predict", json={"program": ref, "batch": inputs})
            outs[ref] = [item["outputs"] for item in r.json()["results"]]
        dataset = [{"inputs": x, "outputs": o} for x, o in zip(inputs, outs["label@1"], strict=True)]
        v1 = await gw.client.post("/evaluate", json={"program": "label", "version": 1, "dataset": dataset})
        latest = await gw.client.post("/evaluate", json={"program": "label", "dataset": dataset})
    assert v1.status_code == 200, v1.text
    assert v1.json()["program"] == "label@1" and v1.json()["score"] == 1.0
    right = sum(a == b for a, b in zip(outs["label@1"], outs["label"], strict=True))
    assert latest.json()["program"] == "label@2" and latest.json()["score"] == right / 5


def _upstream_broken_on(word: str, *, anywhere: bool = False) -> httpx.MockTransport:
    """Answers {"answer": 7}, except for prompts containing ``word`` (in the last message, or with
    ``anywhere`` in any: a repair fails too): text that is not JSON."""
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path != "/v1/chat/completions":
            if request.url.path == "/v1/models":
                return httpx.Response(200, json={"object": "list", "data": [{"id": "m", "object": "model"}]})
            return httpx.Response(200 if request.url.path == "/health" else 404)
        messages = json.loads(request.content)["messages"]
        prompt = " ".join(str(m["content"]) for m in (messages if anywhere else messages[-1:]))
        content = "not json at all" if word in prompt else '{"answer": 7}'
        body = "".join(f"data: {json.dumps(c)}\n\n" for c in completion_chunks(content)) + "data: [DONE]\n\n"
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    return httpx.MockTransport(handler)


async def test_a_failed_example_scores_zero_and_counts_in_failed():
    dataset = [{"inputs": {"question": q}, "outputs": {"answer": 7}} for q in ("one", "two BROKEN", "three", "four")]
    async with gateway("http://upstream", lm_transport=_upstream_broken_on("BROKEN")) as gw:
        r = await gw.client.post("/evaluate", json={"signature": "question -> answer: int", "dataset": dataset,
                                                    "config": {"repair": 0}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["failed"] == 1 and body["count"] == 4 and body["score"] == 3 / 4
    bad = body["results"][1]
    assert bad["prediction"] is None and bad["score"] == 0.0 and bad["scores"] == {"answer": 0.0}
    assert bad["error"]["type"] == "output_validation_error" and bad["error"]["status"] == 502
    assert all("error" not in body["results"][i] for i in (0, 2, 3))


async def test_the_calls_a_failed_example_made_count_in_the_usage():
    """A failed example still spent its calls (the first and its repair): the evaluation's usage sums
    them, as the optimizer's budget, which reads the same books, must."""
    dataset = [{"inputs": {"question": q}, "outputs": {"answer": 7}} for q in ("one", "two BROKEN", "three", "four")]
    async with gateway("http://upstream", lm_transport=_upstream_broken_on("BROKEN", anywhere=True)) as gw:
        r = await gw.client.post("/evaluate", json={"signature": "question -> answer: int", "dataset": dataset,
                                                    "config": {"repair": 1}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["failed"] == 1 and body["results"][1]["error"]["attempts"] == 2
    # 3 good examples of one call each, the failed one 2 calls; every call 5 prompt + 4 completion tokens
    assert body["usage"] == {"prompt_tokens": 5 * 5, "completion_tokens": 5 * 4, "total_tokens": 5 * 9}


@pytest.mark.parametrize(("change", "status", "kind", "needle"), [
    ({"metric": "bogus"}, 422, "invalid_metric", "valid: contains, exact_match, json_equal"),
    ({"metric": {"name": "numeric", "tol": 1}}, 422, "invalid_metric", "its options: relative, tolerance"),
    ({"metric": {"nope": "exact_match"}}, 422, "invalid_metric", "does not output: 'nope'"),
    ({"dataset": [{"inputs": {"q": "x"}, "outputs": {"answer": 1}}]}, 422, "invalid_example",
     "dataset[0]: missing input field(s): 'question'"),
    ({"dataset": [{"inputs": {"question": "x"}, "outputs": {"answr": 1}}]}, 422, "invalid_example",
     "'answr' are not outputs of the program"),
    ({"dataset": [{"inputs": {"question": "x"}, "outputs": {}}]}, 422, "invalid_example", "no expected outputs"),
    ({"dataset": [{"inputs": {"question": "x"}, "outputs": {"answer": 1}}], "metric": "one_of"}, 422,
     "invalid_example", "needs a list of acceptable values"),
    ({"dataset": [{"inputs": {"question": "x"}, "outputs": {"answer": 1}}] * 4}, 422, "dataset_too_large",
     "has 4 examples; the limit is 3"),
    ({"dataset": []}, 422, "invalid_example", "dataset is empty"),
    ({"program": "qa"}, 422, "invalid_request", "exactly one of 'program' or 'signature'"),
    ({"signature": "question -> "}, 422, "invalid_signature", ""),
    ({"demos": [{"question": "x", "nope": 1}]}, 422, "invalid_request", "demo 0 has unknown field(s) 'nope'"),
    ({"signature": None, "program": "nope"}, 404, "program_not_found", "unknown program"),
    ({"model": "no-such-model"}, 404, "model_not_found", ""),
])
async def test_bad_requests_are_clear_errors_before_any_call(sim_url, change, status, kind, needle):
    example = {"inputs": {"question": "x"}, "outputs": {"answer": 1}}
    body = {"signature": "question -> answer: int", "dataset": [example], **change}
    async with gateway(sim_url, evaluate_max_examples=3) as gw:
        r = await gw.client.post("/evaluate", json=body)
        calls = gw.metric("vgate_predictions_total", module="predict", outcome="ok")
    assert r.status_code == status, r.text
    assert r.json()["error"]["type"] == kind and needle in r.json()["error"]["message"]
    assert calls == 0


async def test_a_job_when_asked_and_past_the_threshold(sim_url):
    inputs = [{"question": f"What is {i} + 2?"} for i in range(4)]
    async with gateway(sim_url, evaluate_job_threshold=3) as gw:
        preds = await predictions(gw, "question -> answer: int", inputs)
        dataset = [{"inputs": x, "outputs": p if i != 2 else {"answer": -5}}
                   for i, (x, p) in enumerate(zip(inputs, preds, strict=True))]
        sync = await gw.client.post("/evaluate", json={"signature": "question -> answer: int",
                                                       "dataset": dataset[:3]})
        assert sync.status_code == 200, sync.text  # 3 examples: not past the threshold
        asked = await gw.client.post("/evaluate", json={"signature": "question -> answer: int",
                                                        "dataset": dataset[:3], "job": True})
        large = await gw.client.post("/evaluate", json={"signature": "question -> answer: int", "dataset": dataset})
        for r in (asked, large):
            assert r.status_code == 202, r.text
            accepted = r.json()
            assert accepted["job_id"].startswith("job_") and accepted["kind"] == "evaluate"
            assert r.headers["location"] == accepted["location"] == f"/jobs/{accepted['job_id']}"
            assert accepted["status"] in ("queued", "running") and accepted["progress"]["total"] == (
                3 if r is asked else 4)
        asked_job = await wait_job(gw, asked.headers["location"])
        large_job = await wait_job(gw, large.headers["location"])
        events = await gw.client.get(f"{large.headers['location']}/events")
    assert asked_job["status"] == "succeeded", asked_job
    assert asked_job["result"]["score"] == sync.json()["score"] == 2 / 3
    assert asked_job["result"]["results"] == sync.json()["results"]
    assert large_job["status"] == "succeeded" and large_job["result"]["score"] == 3 / 4
    assert large_job["progress"]["done"] == 4 and large_job["progress"]["score_so_far"] == 3 / 4
    assert "event: progress" in events.text and "event: result" in events.text


async def test_a_multi_step_program_is_evaluated_on_its_final_outputs(sim_url):
    inputs = [{"question": f"Why is topic {i} important?"} for i in range(3)]
    async with gateway(sim_url) as gw:
        r = await gw.client.post("/predict", json={"program": "research_answer", "batch": inputs})
        assert r.status_code == 200, r.text
        outs = [item["outputs"] for item in r.json()["results"]]
        dataset = [{"inputs": x, "outputs": {"answer": o["answer"], "supported": o["supported"] if i else "no"}}
                   for i, (x, o) in enumerate(zip(inputs, outs, strict=True))]
        ok = await gw.client.post("/evaluate", json={"program": "research_answer", "dataset": dataset})
        bad = await gw.client.post("/evaluate", json={"program": "research_answer", "dataset": dataset,
                                                      "demos": []})
    assert ok.status_code == 200, ok.text
    assert ok.json()["scores"] == {"answer": 1.0, "supported": 2 / 3} and ok.json()["score"] == (1 + 1 + 0.5) / 3
    assert ok.json()["program"] == "research_answer@1" and ok.json()["failed"] == 0
    assert bad.status_code == 422 and "cannot be overridden" in bad.json()["error"]["message"]


def test_the_document_declares_the_answer_and_the_job():
    from app.main import create_app
    from tests.support import make_settings

    doc = create_app(make_settings("http://127.0.0.1:9")).openapi()
    for path in ("/evaluate", "/optimize"):
        responses = doc["paths"][path]["post"]["responses"]
        assert responses["202"]["content"]["application/json"]["schema"]["$ref"].endswith("/JobAccepted")
        assert "Location" in responses["202"]["headers"]
    schemas = doc["components"]["schemas"]
    assert {"score", "scores", "results", "count", "failed", "usage", "cost_usd", "latency_ms"} <= set(
        schemas["EvaluateResponse"]["required"])
    assert {"program", "version", "demos", "score_before", "score_after", "calls", "budget_exhausted"} <= set(
        schemas["OptimizeResponse"]["required"])


async def test_an_expected_value_no_metric_can_read_scores_0_not_a_500(sim_url):
    """An integer of 400 digits (valid JSON, a Python int float() refuses) and JSON text nested
    deeper than Python parses: the example scores 0, the evaluation answers 200."""
    huge = "1" + "0" * 400
    deep = json.dumps("[" * 5000)
    body = ('{"signature": "question -> answer: float, data: str", "metric": {"answer": "numeric", '
            '"data": "json_equal"}, "dataset": [{"inputs": {"question": "q"}, '
            f'"outputs": {{"answer": {huge}, "data": {deep}}}}}]}}')
    async with gateway(sim_url) as gw:
        r = await gw.client.post("/evaluate", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["scores"] == {"answer": 0.0, "data": 0.0}


async def test_a_multi_step_example_that_fails_in_a_later_step_counts_the_steps_it_ran(tmp_path):
    """Step ``a`` answers, step ``b`` gets a reply without its field (the upstream always says
    {"answer": 7}) and fails: the example failed, but both calls count in the usage."""
    two = {"name": "two", "inputs": {"question": "str"}, "outputs": {"verdict": "b.verdict"},
           "config": {"repair": 0}, "steps": [
               {"name": "a", "signature": "question -> answer: int", "inputs": {"question": "inputs.question"}},
               {"name": "b", "signature": "answer: int -> verdict: int", "inputs": {"answer": "a.answer"}}]}
    (tmp_path / "two.json").write_text(json.dumps(two))
    dataset = [{"inputs": {"question": "q"}, "outputs": {"verdict": 1}}]
    async with gateway("http://upstream", lm_transport=_upstream_broken_on("BROKEN"), programs_dir=tmp_path) as gw:
        r = await gw.client.post("/evaluate", json={"program": "two", "dataset": dataset})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["failed"] == 1 and body["results"][0]["error"]["step"] == "b"
    assert body["usage"] == {"prompt_tokens": 2 * 5, "completion_tokens": 2 * 4, "total_tokens": 2 * 9}
