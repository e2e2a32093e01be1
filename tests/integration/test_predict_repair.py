"""Self-correcting outputs (config.repair) against the simulator: its ``bad_output`` fault makes a
reply break the signature (``type``: the first value of the wrong type; ``text``: no JSON at all),
and the gateway asks again with the validation errors shown to the model."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import structlog
from structlog.testing import capture_logs

from tests.predict_support import Recorder, ask_sim, last_user
from tests.support import gateway, sim_reset, sim_stats

SIG = "question -> answer: int"
INPUTS = {"question": "What is 2 + 3?"}


def once(kind: str = "type", times: int = 1) -> str:
    """A fault on the first ``times`` calls of one prediction (its calls share a group)."""
    return f"bad_output={kind};times={times};group=g-{uuid.uuid4().hex}"


async def predict(gw, **body):
    return await gw.client.post("/predict", json={"signature": SIG, "inputs": INPUTS, **body})


async def test_a_bad_reply_is_fixed_by_one_repair(sim_url):
    rec = Recorder(once())
    await sim_reset(sim_url)
    async with gateway(sim_url, lm_transport=rec) as gw:
        r = await predict(gw)
        fixed = gw.metric("vgate_predict_repairs_total", outcome="fixed")
        failed = gw.metric("vgate_predict_repairs_total", outcome="failed")
        cost = gw.metric("vgate_cost_usd_total", model="sim-model", route="predict")
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body["outputs"]["answer"], int) and body["repairs"] == 1
    assert len(rec.bodies) == 2  # the first call and one repair
    stats = await sim_stats(sim_url)
    assert stats["requests_total"] == 2 and stats["faults_injected_total"] == {"bad_output": 1}
    # usage and cost: both calls, as the simulator counted them
    assert body["usage"]["prompt_tokens"] == stats["prompt_tokens_total"]
    assert body["usage"]["completion_tokens"] == stats["generation_tokens_total"]
    assert body["cost_usd"] == pytest.approx(cost) and cost > 0  # both calls' cost
    assert fixed == 1 and failed == 0
    # the repair is the first call's conversation, the bad reply, and the errors
    first, repair = rec.bodies
    bad = (await ask_sim(sim_url, first, "bad_output=type"))["choices"][0]["message"]["content"]
    assert repair["messages"][:-2] == first["messages"]
    assert repair["messages"][-2] == {"role": "assistant", "content": bad}
    assert json.loads(bad)["answer"] == "not a valid value"
    assert repair["response_format"] == first["response_format"]


async def test_a_repair_shows_the_model_the_errors(sim_url):
    rec = Recorder(once("text"))
    async with gateway(sim_url, lm_transport=rec) as gw:
        r = await gw.client.post("/predict", json={"signature": "question -> answer: int, sure: bool",
                                                    "inputs": INPUTS})
    assert r.status_code == 200, r.text
    ask = last_user(rec.bodies[1])
    assert rec.bodies[1]["messages"][-1]["role"] == "user"
    assert "does not match the required output format" in ask
    assert "- the reply as a whole: not valid JSON (Expecting value: line 1 column 1" in ask
    assert '"answer", "sure"' in ask  # the keys, in order


async def test_type_errors_are_shown_with_their_field(sim_url):
    rec = Recorder(once("type"))
    async with gateway(sim_url, lm_transport=rec) as gw:
        r = await predict(gw)
    assert r.status_code == 200
    ask = last_user(rec.bodies[1])
    assert "`answer`: Input should be a valid integer" in ask


async def test_repair_0_fails_at_once(sim_url):
    rec = Recorder(once())
    async with gateway(sim_url, lm_transport=rec) as gw:
        r = await predict(gw, config={"repair": 0})
        assert gw.metric("vgate_predict_repairs_total", outcome="failed") == 0
        assert gw.metric("vgate_predictions_total", module="predict", outcome="invalid_output") == 1
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["type"] == "output_validation_error" and err["attempts"] == 1
    assert json.loads(err["raw"])["answer"] == "not a valid value"
    assert err["errors"][0]["loc"] == ["answer"]
    assert len(rec.bodies) == 1


async def test_two_bad_replies_with_repair_1_is_a_502_with_both_attempts(sim_url):
    rec = Recorder(once("text", times=2))
    async with gateway(sim_url, lm_transport=rec) as gw:
        r = await predict(gw, config={"repair": 1})
        assert gw.metric("vgate_predict_repairs_total", outcome="failed") == 1
        assert gw.metric("vgate_predict_repairs_total", outcome="fixed") == 0
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["type"] == "output_validation_error" and err["attempts"] == 2
    assert len(rec.bodies) == 2
    last = (await ask_sim(sim_url, rec.bodies[1], "bad_output=text"))["choices"][0]["message"]["content"]
    assert err["raw"] == last  # the last reply's text
    assert err["errors"] and err["errors"][0]["type"] == "json_invalid"


async def test_repair_2_makes_at_most_two_repairs(sim_url):
    rec = Recorder(once("type", times=5))
    async with gateway(sim_url, lm_transport=rec) as gw:
        r = await predict(gw, config={"repair": 2})
        assert gw.metric("vgate_predict_repairs_total", outcome="failed") == 2
    assert r.status_code == 502 and r.json()["error"]["attempts"] == 3 and len(rec.bodies) == 3
    # each repair extends the conversation again
    assert [len(b["messages"]) for b in rec.bodies] == [2, 4, 6]
    async with gateway(sim_url) as gw:
        r = await predict(gw, config={"repair": 3})
    assert r.status_code == 422  # at most 2


async def test_a_cut_off_reply_is_repaired_with_a_note_about_its_length(sim_url):
    rec = Recorder()
    async with gateway(sim_url, lm_transport=rec) as gw:
        r = await gw.client.post("/predict", json={"signature": "q -> a, b: list[str]", "inputs": {"q": "x"},
                                                    "config": {"max_tokens": 2}})
        assert gw.metric("vgate_predictions_total", module="predict", outcome="truncated") == 1
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["type"] == "output_truncated" and err["attempts"] == 2 and err["max_tokens"] == 2
    assert err["errors"][0]["type"] == "truncated" and "raw" in err
    assert "cut off at the limit of 2 tokens" in last_user(rec.bodies[1])


async def test_chain_of_thought_is_repaired_and_keeps_its_reasoning(sim_url):
    rec = Recorder(once())  # the first property is the reasoning: a number
    async with gateway(sim_url, lm_transport=rec) as gw:
        r = await predict(gw, module="chain_of_thought")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["repairs"] == 1 and isinstance(body["reasoning"], str) and body["reasoning"]
    assert "`reasoning`: Input should be a valid string" in last_user(rec.bodies[1])


async def test_no_repairs_key_without_a_repair(sim_url):
    async with gateway(sim_url) as gw:
        r = await predict(gw)
    assert r.status_code == 200 and "repairs" not in r.json()


async def test_batch_items_repair_on_their_own(sim_url):
    def rule(i: int, body: dict) -> str | None:
        # item "b" breaks on its first call only (a repair has 4 messages)
        return "bad_output=type" if "[[ ## question ## ]]\nb" in last_user(body) and len(body["messages"]) == 2 \
            else None

    rec = Recorder(rule)
    await sim_reset(sim_url)
    async with gateway(sim_url, lm_transport=rec) as gw:
        r = await gw.client.post("/predict", json={"signature": SIG, "batch": [{"question": q} for q in "abc"]})
        assert gw.metric("vgate_predict_repairs_total", outcome="fixed") == 1
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["succeeded"] == 3
    assert [x.get("repairs") for x in body["results"]] == [None, 1, None]
    stats = await sim_stats(sim_url)
    assert stats["requests_total"] == 4
    assert body["usage"]["prompt_tokens"] == stats["prompt_tokens_total"]
    assert body["usage"]["completion_tokens"] == stats["generation_tokens_total"]


async def test_a_repair_does_not_start_when_too_little_time_is_left(sim_url):
    """The first reply took 600 ms of a 1 s deadline: a repair would likely not finish in the 400 ms
    left, so none starts, and the error says so."""
    rec = Recorder("bad_output=type;slow_first_token_ms=600")
    async with gateway(sim_url, lm_transport=rec, request_timeout_s=1.0) as gw:
        started = time.perf_counter()
        r = await predict(gw)
        took = time.perf_counter() - started
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["type"] == "output_validation_error" and err["attempts"] == 1
    assert err["repair_skipped"] == "deadline"
    assert len(rec.bodies) == 1 and took < 1.0


async def test_a_repair_is_cut_by_the_request_deadline(sim_url):
    """The repair started in time but its reply is slow: the call ends at the request's deadline (one
    deadline for the prediction, not a fresh one per call)."""
    rec = Recorder(lambda i, body: "bad_output=type" if i == 0 else "slow_first_token_ms=5000")
    async with gateway(sim_url, lm_transport=rec, request_timeout_s=1.5, max_retries=0) as gw:
        started = time.perf_counter()
        r = await predict(gw)
        took = time.perf_counter() - started
        assert gw.metric("vgate_predict_repairs_total", outcome="failed") == 1
    assert r.status_code == 504, r.text
    assert r.json()["error"]["type"] == "upstream_timeout"
    assert len(rec.bodies) == 2 and took < 2.5


async def test_each_repair_is_logged_with_the_request_id(sim_url):
    rec = Recorder(once())
    async with gateway(sim_url, lm_transport=rec, log_level="INFO") as gw:
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            r = await gw.client.post("/predict", json={"signature": SIG, "inputs": INPUTS},
                                     headers={"x-request-id": "repair-log-1"})
    assert r.status_code == 200
    lines = [x for x in logs if x["event"] == "predict_repair"]
    assert len(lines) == 1
    assert lines[0]["request_id"] == "repair-log-1" and lines[0]["repair"] == 1
    assert lines[0]["reason"] == "output_validation_error" and "answer" in lines[0]["summary"]


@pytest.mark.parametrize("repair", [None, 1])
async def test_a_program_config_and_the_request_set_repair(sim_url, repair):
    rec = Recorder(once())
    async with gateway(sim_url, lm_transport=rec) as gw:
        config = {} if repair is None else {"repair": repair}
        r = await predict(gw, config=config)
    assert r.status_code == 200 and r.json()["repairs"] == 1  # the default is 1
