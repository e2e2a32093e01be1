"""End to end against a real model: llama.cpp's server with SmolLM2-135M on the CPU.

The model is small and often wrong; these tests check what the gateway guarantees (typed,
schema-valid outputs, order, accounting, the agent's event flow), not the answers' truth.
"""

from __future__ import annotations

import pytest

from tests.integration.test_agent_api import parse_sse
from tests.support import gateway

pytestmark = []


async def test_predict_int_answer(local_llm_url):
    async with gateway(local_llm_url) as gw:
        r = await gw.client.post("/predict", json={"signature": "question -> answer: int",
                                                    "inputs": {"question": "What is 2 + 3?"}})
        assert r.status_code == 200, r.text
        body = r.json()
        assert type(body["outputs"]["answer"]) is int
        assert body["model"] == "smollm2-135m-instruct"
        assert body["usage"]["prompt_tokens"] > 20 and body["usage"]["completion_tokens"] > 0
        assert body["ttft_ms"] > 0 and body["latency_ms"] >= body["ttft_ms"]
        assert gw.metric("vgate_prompt_tokens_total", model="smollm2-135m-instruct", route="predict") \
            == body["usage"]["prompt_tokens"]


async def test_predict_batch_in_order_with_types(local_llm_url):
    texts = ["I love this phone", "Terrible, broke in a day", "It is a chair", "Best coffee ever"]
    async with gateway(local_llm_url) as gw:
        r = await gw.client.post("/predict", json={"program": "sentiment", "batch": [{"text": t} for t in texts]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["index"] for x in body["results"]] == [0, 1, 2, 3]
    assert body["succeeded"] == 4
    for item in body["results"]:
        assert item["outputs"]["sentiment"] in ("positive", "negative", "neutral")
        assert isinstance(item["outputs"]["confidence"], float)
    assert body["usage"]["total_tokens"] == sum(x["usage"]["total_tokens"] for x in body["results"])


async def test_chain_of_thought_structured(local_llm_url):
    sig = "context: list[str], question -> answer: str, confidence: float"
    async with gateway(local_llm_url) as gw:
        r = await gw.client.post("/predict", json={
            "signature": sig, "module": "chain_of_thought", "config": {"max_tokens": 300},
            "inputs": {"context": ["The Eiffel Tower is in Paris."], "question": "Where is the Eiffel Tower?"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body["reasoning"], str)
    assert set(body["outputs"]) == {"answer", "confidence"}
    assert isinstance(body["outputs"]["answer"], str) and isinstance(body["outputs"]["confidence"], float)


async def test_agent_forced_calculator_call(local_llm_url):
    async with gateway(local_llm_url) as gw:
        r = await gw.client.post("/agent", json={
            "input": "What is 12 * 7? Use the calculator.", "tools": ["calculator"],
            "tool_choice": {"type": "function", "function": {"name": "calculator"}},
            "max_steps": 3, "config": {"max_tokens": 120, "temperature": 0}})
        assert r.status_code == 200
        events = parse_sse(r.text)
        runs_metric = sum(gw.metric("vgate_agent_runs_total", outcome=o) for o in ("ok", "max_steps", "length"))
        steps_metric = gw.metric("vgate_agent_steps_sum")
    kinds = [e["event"] for e in events if e["event"] not in ("delta", "reasoning")]
    assert kinds[0] == "run" and kinds[1] == "tool_call" and kinds[2] == "tool_result"
    assert kinds[-1] == "final"
    call = events[[e["event"] for e in events].index("tool_call")]["data"]
    result = events[[e["event"] for e in events].index("tool_result")]["data"]
    assert call["name"] == "calculator" and isinstance(call["arguments"], dict)
    assert result["id"] == call["id"]
    final = events[-1]["data"]
    assert final["stop_reason"] in ("answer", "max_steps", "length") and isinstance(final["answer"], (str, type(None)))
    assert final["steps"] >= 2 and final["model_calls"] >= final["steps"]  # the tool call's step, then another
    usage = final["usage"]
    assert usage["prompt_tokens"] > 0 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    expected_cost = (usage["prompt_tokens"] * 0.01 + usage["completion_tokens"] * 0.03) / 1000  # the default price
    assert final["cost_usd"] == pytest.approx(expected_cost) and final["cost_usd"] == round(final["cost_usd"], 10)
    assert runs_metric == 1 and steps_metric == final["steps"]


async def test_agent_runs_stream_after_a_forced_call_the_model_ignored(local_llm_url):
    """The README's forced-tool example: this model ignores tool_choice, so that run falls back to
    ReAct. Later runs, with tools or without, still stream their answers in many deltas."""
    async with gateway(local_llm_url) as gw:
        forced = await gw.client.post("/agent", json={
            "input": "What is 12 * 7?", "tools": ["calculator"],
            "tool_choice": {"type": "function", "function": {"name": "calculator"}}, "max_steps": 3})
        later = [parse_sse((await gw.client.post("/agent", json={
            "input": "Why is the sky blue?", "tools": tools, "config": {"max_tokens": 200, "temperature": 0}})).text)
            for tools in ([], ["calculator"])]
    assert parse_sse(forced.text)[-1]["event"] == "final"
    for events in later:
        final = events[-1]["data"]
        # the answer is the last step's text (a model may write some before a tool call, in its own step)
        deltas = [e["data"]["text"] for e in events if e["event"] == "delta" and e["data"]["step"] == final["steps"]]
        assert events[-1]["event"] == "final" and len(deltas) >= 3
        assert "".join(deltas) == final["answer"]


async def test_a_model_llama_cpp_does_not_serve_is_a_404_not_its_own_answer(local_llm_url):
    """llama.cpp answers any model name with its own model; the gateway must not pass that off."""
    async with gateway(local_llm_url) as gw:
        r = await gw.client.post("/predict", json={"signature": "question -> answer", "model": "gpt-4o",
                                                    "inputs": {"question": "hi"}})
    assert r.status_code == 404, r.text
    err = r.json()["error"]
    assert err["type"] == "model_not_found" and err["available"] == ["smollm2-135m-instruct"]


def test_the_openai_client_through_the_gateway_to_llama_cpp(local_llm_url):
    """The passthrough in front of a server that is not vLLM (no vLLM /metrics, its own error texts):
    the official client gets llama.cpp's answer, streamed and not, and the gateway counts it."""
    import openai

    from tests.support import live_gateway

    with live_gateway(local_llm_url) as (base, app):
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        r = client.chat.completions.create(model="smollm2-135m-instruct", max_tokens=8,
                                           messages=[{"role": "user", "content": "Say hello."}])
        chunks = list(client.chat.completions.create(model="smollm2-135m-instruct", max_tokens=8, stream=True,
                                                     messages=[{"role": "user", "content": "Say hello."}]))
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        registry = app.state.metrics.registry  # type: ignore[attr-defined]
        ok = registry.get_sample_value("vgate_upstream_requests_total",
                                       {"model": "smollm2-135m-instruct", "outcome": "ok"})
    assert r.choices[0].message.content and r.usage.completion_tokens > 0
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert all(c.usage is None for c in chunks)  # the usage chunk the gateway asked for is not passed on
    assert ok == 2
