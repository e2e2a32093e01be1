"""Predict, ChainOfThought, Majority and Program against the gateway in front of the simulator:
typed outputs, usage and cost, batches, typed errors, sync and async, default and explicit clients."""

from __future__ import annotations

import httpx
import pytest
import vgate

from tests.support import completion_chunks, fake_upstream, live_gateway

KEY = "vg-" + "c" * 29
NO_PREDICT = "vg-" + "d" * 29
KEYS = [{"id": "app", "key": KEY, "scopes": ["predict", "agent", "tools"]},
        {"id": "ops", "key": NO_PREDICT, "scopes": ["tools"]}]


def test_the_readme_snippet(configured):
    qa = vgate.Predict("question -> answer: int")
    pred = qa(question="What is 2 + 3?")
    assert type(pred.answer) is int
    assert pred["answer"] == pred.answer == pred.outputs["answer"]
    assert pred.to_dict() == {"answer": pred.answer}
    assert pred.usage.total_tokens == pred.usage.prompt_tokens + pred.usage.completion_tokens > 0
    assert pred.cost_usd > 0 and pred.latency_ms > 0 and pred.model == "sim-model"
    assert pred.raw["signature"] == "question: str -> answer: int" and pred.request_id
    assert pred.reasoning is None and pred.trace is None
    with pytest.raises(AttributeError, match="answer"):
        pred.nope  # noqa: B018


def test_chain_of_thought_returns_its_reasoning(configured):
    cot = vgate.ChainOfThought("context: list[str], question -> answer")
    pred = cot(context=["The Eiffel Tower is in Paris."], question="Where is the Eiffel Tower?")
    assert isinstance(pred.answer, str) and isinstance(pred.reasoning, str)
    assert pred.raw["module"] == "chain_of_thought"
    assert list(pred.to_dict()) == ["reasoning", "answer"]


def test_types_come_back_as_declared(configured):
    pred = vgate.Predict("text -> tags: list[str], score: float, ok: bool, counts: dict[str, int]")(text="hi")
    assert isinstance(pred.tags, list) and all(isinstance(t, str) for t in pred.tags)
    assert isinstance(pred.score, float) and isinstance(pred.ok, bool)
    assert all(isinstance(v, int) for v in pred.counts.values())


def test_instructions_demos_model_and_config_reach_the_gateway(configured):
    qa = vgate.Predict("question -> answer: int", instructions="Add the numbers.", model="sim-model",
                       demos=[{"question": "1 + 1?", "answer": 2}], temperature=0, max_tokens=32)
    assert qa.request_body(inputs={"question": "x"}) == {
        "signature": "question -> answer: int", "module": "predict", "instructions": "Add the numbers.",
        "demos": [{"question": "1 + 1?", "answer": 2}], "model": "sim-model",
        "config": {"temperature": 0, "max_tokens": 32}, "inputs": {"question": "x"}}
    assert isinstance(qa(question="2 + 3?").answer, int)
    assert isinstance(qa(question="2 + 3?", config={"seed": 1}).answer, int)  # config per call


def test_majority_is_predict_with_n_samples(configured):
    m = vgate.Majority("question -> answer: int", n=3)
    assert m.request_body(inputs={"question": "x"})["config"] == {"n": 3}
    assert vgate.Predict("q -> a", module="majority", n=5).request_body(inputs={})["module"] == "majority"
    assert isinstance(m(question="What is 2 + 3?").answer, int)


def test_majority_reports_its_vote(configured):
    """The vote's figures (the predict branch)."""
    pred = vgate.Majority("question -> answer: int", n=3)(question="What is 2 + 3?")
    assert pred.samples == 3 and 0 < pred.agreement["answer"] <= 1 and pred.valid_samples <= 3


def test_a_program_batch_is_a_list_in_input_order_with_failed_items_as_errors(configured):
    results = vgate.Program("sentiment").batch([{"text": "I love it"}, {"wrong": 1}, {"text": "Awful"}])
    assert isinstance(results, list) and len(results) == 3
    assert results[0].sentiment in ("positive", "negative", "neutral")
    assert isinstance(results[0].confidence, float) and isinstance(results[2], vgate.Prediction)
    failed = results[1]
    assert isinstance(failed, vgate.PredictionError) and isinstance(failed, vgate.VGateError)
    assert failed.index == 1 and failed.type == "invalid_request" and "text" in failed.message
    assert (results.succeeded, results.failed, results.errors) == (2, 1, [failed])
    assert results.usage.total_tokens == results[0].usage.total_tokens + results[2].usage.total_tokens
    assert results.cost_usd == pytest.approx(results[0].cost_usd + results[2].cost_usd)
    with pytest.raises(vgate.PredictionError) as info:
        vgate.Program("sentiment").batch([{"text": "ok"}, {"wrong": 1}], return_exceptions=False)
    assert info.value.index == 1


def test_a_program_by_version(configured):
    assert vgate.Program("sentiment", version=1).name == "sentiment@1"
    assert vgate.Program("sentiment@1")(text="fine").raw["program"] == "sentiment"
    names = {p["name"] for p in vgate.default_client().programs()}
    assert {"sentiment", "qa"} <= names


def test_gateway_errors_are_typed(configured):
    with pytest.raises(vgate.NotFound) as info:
        vgate.Program("no_such_program")(text="x")
    assert info.value.type == "program_not_found" and "sentiment" in info.value.error["available"]
    with pytest.raises(vgate.InvalidRequest) as info:
        vgate.Predict("question -> answer: complex")(question="x")
    assert info.value.status == 422 and info.value.type == "invalid_signature"
    with pytest.raises(vgate.InvalidRequest):
        vgate.Predict("question -> answer")(wrong="x")
    with pytest.raises(vgate.NotFound) as info:
        vgate.Predict("q -> a", model="no-such-model")(q="x")
    assert info.value.type == "model_not_found"


def test_api_keys(sim_url):
    with live_gateway(sim_url, api_keys=KEYS) as (url, _):
        with pytest.raises(vgate.AuthenticationError):
            vgate.Predict("q -> a", client=vgate.Client(url))(q="x")
        with pytest.raises(vgate.PermissionDenied) as info:
            vgate.Predict("q -> a", client=vgate.Client(url, NO_PREDICT))(q="x")
        assert info.value.type == "scope_missing"
        vgate.configure(base_url=url, api_key=KEY)
        assert vgate.Predict("q -> a")(q="x").a is not None


def test_an_output_that_breaks_the_signature_is_an_output_validation_error():
    upstream = fake_upstream(completion_chunks('{"answer": "five"}'))
    with live_gateway("http://fake-upstream", lm_transport=upstream) as (url, _):
        with pytest.raises(vgate.OutputValidationError) as info:
            vgate.Predict("question -> answer: int", client=vgate.Client(url))(question="x")
    assert info.value.status == 502 and info.value.raw == '{"answer": "five"}'
    assert info.value.errors and info.value.retryable


def test_an_unavailable_upstream_is_an_upstream_error_with_retry_after():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "m", "object": "model"}]})
        return httpx.Response(503, json={"error": "overloaded"})

    with live_gateway("http://fake-upstream", lm_transport=httpx.MockTransport(handler)) as (url, _):
        with pytest.raises(vgate.UpstreamError) as info:
            vgate.Predict("q -> a", client=vgate.Client(url))(q="x")
    assert info.value.status == 503 and info.value.retry_after and info.value.retryable


async def test_async_forms(gateway_url):
    async with vgate.AsyncClient(gateway_url) as client:
        qa = vgate.Predict("question -> answer: int", client=client)
        assert isinstance((await qa.acall(question="2 + 3?")).answer, int)
        assert isinstance((await qa.aforward(question="2 + 3?")).answer, int)
        results = await vgate.Program("sentiment", client=client).abatch([{"text": "a"}, {"text": "b"}])
        assert [type(r) for r in results] == [vgate.Prediction, vgate.Prediction]
        with pytest.raises(vgate.NotFound):
            await vgate.Program("nope", client=client).acall(text="x")


async def test_the_default_async_client(configured):
    assert isinstance((await vgate.Predict("q -> n: int").acall(q="x")).n, int)


def test_a_list_longer_than_the_gateways_batch_limit_goes_in_several_batches(sim_url):
    texts = [{"text": f"review {i}"} for i in range(5)]
    with live_gateway(sim_url, max_batch_size=2) as (url, _):
        program = vgate.Program("sentiment", client=vgate.Client(url))
        results = program.batch([*texts[:3], {"wrong": 1}, *texts[3:]])
        one = [program(text=t["text"]) for t in texts]
    assert len(results) == 6 and results.failed == 1 and results[3].index == 3
    assert [r.sentiment for i, r in enumerate(results) if i != 3] == [p.sentiment for p in one]
    assert results.usage.total_tokens == sum(p.usage.total_tokens for p in one)
    assert len(results.raw["request_ids"]) == 3
    assert len({r.request_id for r in results}) == 3


async def test_abatch_splits_the_same_way(sim_url):
    with live_gateway(sim_url, max_batch_size=2) as (url, _):
        async with vgate.AsyncClient(url) as client:
            results = await vgate.Program("sentiment", client=client).abatch([{"text": str(i)} for i in range(3)])
    assert [type(r) for r in results] == [vgate.Prediction] * 3


def test_a_multi_step_program_returns_its_trace(configured):
    """research_answer (the programs branch): outputs, a trace of every step, usage and cost summed."""
    pred = vgate.Program("research_answer")(question="Why is the sky blue?")
    assert isinstance(pred.answer, str)
    steps = pred.trace
    assert steps and all(isinstance(s, vgate.TraceStep) for s in steps)
    assert all(s.name and s.outputs and s.usage.total_tokens > 0 for s in steps)
    assert pred.usage.total_tokens == sum(s.usage.total_tokens for s in steps)
    assert pred.cost_usd == pytest.approx(sum(s.cost_usd for s in steps))
    mapped = [s for s in steps if s.mapped is not None]
    assert mapped and all(len(s.mapped) == len(s.inputs[s.raw["map"]]) for s in mapped)


def test_unions_tuples_and_object_types_come_back_as_their_json(configured):
    """DSPy's full types (the types branch): a tuple arrives as a list, an object type as a dict."""
    pred = vgate.Predict("text -> pair: tuple[int, str], either: Union[int, list[str]], anything: Any")(text="x")
    assert isinstance(pred.pair, list) and isinstance(pred.pair[0], int) and isinstance(pred.pair[1], str)
    assert isinstance(pred.either, (int, list))
    contacts = vgate.Program("extract_contacts")(text="Ada Lovelace, ada@example.com, analyst at Babbage & Co.")
    assert all(isinstance(c, dict) and isinstance(c["name"], str) for c in contacts.contacts)
