"""Issue 9's programs end to end against a real model (llama.cpp's server with SmolLM2-135M): the
multi-step research_answer program, and DSPy's richer types held by the server's grammar. The model
is small and often wrong; what is checked is what the gateway guarantees: shapes, types, the trace
and its accounting."""

from __future__ import annotations

from tests.support import gateway


async def test_research_answer_runs_every_step_on_a_real_model(local_llm_url):
    async with gateway(local_llm_url) as gw:
        # SmolLM2 repeats itself until max_tokens without a penalty; the config reaches every step
        r = await gw.client.post("/predict", json={"program": "research_answer", "config": {"frequency_penalty": 1.0},
                                                    "inputs": {"question": "Why is the sky blue?"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [s["name"] for s in body["trace"]] == ["plan", "answer", "synthesize", "verify"]
    questions = body["outputs"]["sub_questions"]
    assert 2 <= len(questions) <= 4 and all(isinstance(q, str) for q in questions)  # min_items/max_items held
    assert len(body["trace"][1]["items"]) == len(questions)  # the mapped step ran once per sub-question
    assert isinstance(body["outputs"]["answer"], str) and isinstance(body["outputs"]["supported"], bool)
    for key in ("prompt_tokens", "completion_tokens"):
        assert body["usage"][key] == sum(s["usage"][key] for s in body["trace"])


async def test_unions_tuples_and_object_types_on_a_real_model(local_llm_url):
    signature = {
        "types": {"Contact": {"name": "str", "email": "Optional[str]"}},
        "inputs": {"text": "str"},
        "outputs": {"contacts": {"type": "list[Contact]", "max_items": 3}, "pair": "tuple[int, str]",
                    "stars": {"type": "int", "ge": 1, "le": 5}, "tag": "Union[int, str]"},
    }
    async with gateway(local_llm_url) as gw:
        r = await gw.client.post("/predict", json={
            "signature": signature, "config": {"max_tokens": 200, "temperature": 0},
            "inputs": {"text": "Ada Lovelace (ada@example.com) rated it 4 stars."}})
    assert r.status_code == 200, r.text
    out = r.json()["outputs"]
    assert isinstance(out["contacts"], list) and len(out["contacts"]) <= 3
    for c in out["contacts"]:
        assert set(c) == {"name", "email"} and isinstance(c["name"], str) and isinstance(c["email"], str | None)
    assert isinstance(out["pair"], list) and len(out["pair"]) == 2  # a tuple, as JSON
    assert type(out["pair"][0]) is int and isinstance(out["pair"][1], str)
    assert type(out["stars"]) is int and 1 <= out["stars"] <= 5
    assert type(out["tag"]) in (int, str)
