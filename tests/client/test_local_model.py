"""The client against a real model (llama.cpp's server with SmolLM2-135M on the CPU, the demo's):
the README's snippet gives the declared types. The model is small and often wrong; the types are
what the gateway guarantees."""

from __future__ import annotations

import vgate

from tests.support import live_gateway


def test_the_client_as_the_readme_shows_it_on_a_real_model(local_llm_url):
    with live_gateway(local_llm_url) as (url, _):
        vgate.configure(base_url=url)
        pred = vgate.Predict("question -> answer: int")(question="What is 2 + 3?")
        assert type(pred.answer) is int and pred.model == "smollm2-135m-instruct"
        assert pred.usage.completion_tokens > 0
        cot = vgate.ChainOfThought("context: list[str], question -> answer", max_tokens=128)
        pred = cot(context=["The Eiffel Tower is in Paris."], question="Where is the Eiffel Tower?")
        assert isinstance(pred.answer, str) and isinstance(pred.reasoning, str)
        results = vgate.Program("sentiment").batch([{"text": "I love it"}, {"text": "Awful"}])
        assert [r.sentiment in ("positive", "negative", "neutral") for r in results] == [True, True]
        events = list(vgate.Agent(tools=["calculator"], tool_choice="calculator", max_steps=2).stream("12 * 7?"))
        assert events[0].event == "run" and events[-1].event in ("final", "error")
