"""The official `openai` SDK against a running `vgate sim`: every call a client of vLLM makes parses.

The simulator runs as a subprocess (the `sim_url` fixture), as the gateway's passthrough will reach it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from enum import Enum

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

MODEL = "sim-model"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "minLength": 1},
                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
SEARCH = {"type": "function", "function": {"name": "search", "parameters": {
    "type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}


class Unit(str, Enum):
    celsius = "celsius"
    fahrenheit = "fahrenheit"


class City(BaseModel):
    name: str
    country: str
    population: int = Field(ge=0)
    landmarks: list[str]
    unit: Unit
    mayor: str | None


class Report(BaseModel):
    title: str
    cities: list[City]
    confidence: float = Field(ge=0, le=1)


class GetWeather(BaseModel):
    city: str
    unit: Unit


@pytest.fixture(scope="module")
def client(sim_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{sim_url}/v1", api_key="not-needed", max_retries=0, timeout=30) as c:
        yield c


def _norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def test_models_list(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].owned_by == "vllm" and models.data[0].object == "model"


def test_plain_chat(client):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Tell me about Paris"}])
    assert r.object == "chat.completion" and r.model == MODEL
    choice = r.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert choice.message.content and "Paris" in choice.message.content
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streamed_chat_with_usage_matches_the_plain_answer(client):
    messages = [{"role": "user", "content": "Tell me about Paris"}]
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, stream=True,
                                                 stream_options={"include_usage": True}))
    *deltas, last = chunks
    assert last.choices == [] and last.usage.completion_tokens > 0 and last.usage.prompt_tokens > 0
    assert deltas[-1].choices[0].finish_reason == "stop"
    text = "".join(c.choices[0].delta.content or "" for c in deltas)
    plain = client.chat.completions.create(model=MODEL, messages=messages)
    assert text == plain.choices[0].message.content
    assert last.usage.model_dump() == plain.usage.model_dump()


def test_chat_stream_helper_accumulates_the_final_completion(client):
    with client.chat.completions.stream(model=MODEL, messages=[{"role": "user", "content": "Describe Rome"}],
                                        response_format=GetWeather) as stream:
        final = stream.get_final_completion()
    parsed = final.choices[0].message.parsed
    assert isinstance(parsed, GetWeather) and parsed.city


def test_tool_call_with_auto_choice(client):
    r = client.chat.completions.create(
        model=MODEL, tools=[WEATHER, SEARCH], tool_choice="auto",
        messages=[{"role": "user", "content": 'CALL get_weather {"city": "Paris", "unit": "celsius"}'}])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}


def test_tool_call_with_named_choice_has_schema_valid_arguments(client):
    r = client.chat.completions.create(
        model=MODEL, tools=[WEATHER, SEARCH], tool_choice={"type": "function", "function": {"name": "get_weather"}},
        messages=[{"role": "user", "content": "What is the weather like in Oslo?"}])
    [call] = r.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])


def test_streamed_tool_call_fragments_join_to_valid_arguments(client):
    chunks = list(client.chat.completions.create(
        model=MODEL, tools=[WEATHER], tool_choice="required", stream=True,
        messages=[{"role": "user", "content": "Weather in Lima?"}]))
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    assert calls[0].function.name == "get_weather" and calls[0].id
    arguments = "".join(tc.function.arguments or "" for tc in calls)
    jsonschema.validate(json.loads(arguments), WEATHER["function"]["parameters"])
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_parse_with_a_pydantic_response_format(client):
    r = client.chat.completions.parse(model=MODEL, response_format=Report,
                                      messages=[{"role": "user", "content": "Report on Paris and Lyon"}])
    report = r.choices[0].message.parsed
    assert isinstance(report, Report) and report.cities
    assert all(isinstance(city, City) and city.population >= 0 for city in report.cities)
    assert 0 <= report.confidence <= 1
    assert Report.model_validate_json(r.choices[0].message.content) == report


def test_parse_with_a_strict_pydantic_tool(client):
    tool = openai.pydantic_function_tool(GetWeather)
    r = client.chat.completions.parse(model=MODEL, tools=[tool],
                                      tool_choice={"type": "function", "function": {"name": "GetWeather"}},
                                      messages=[{"role": "user", "content": "Weather in Kyoto?"}])
    [call] = r.choices[0].message.tool_calls
    assert isinstance(call.function.parsed_arguments, GetWeather)


def test_embeddings_default_base64_are_unit_norm_and_deterministic(client):
    texts = ["The capital of France is Paris.", "Bananas are yellow.", "The capital of France is Paris."]
    r = client.embeddings.create(model=MODEL, input=texts)  # the SDK asks for base64 and decodes it
    assert r.object == "list" and [d.index for d in r.data] == [0, 1, 2]
    vectors = [d.embedding for d in r.data]
    assert all(len(v) == 384 and abs(_norm(v) - 1) < 1e-5 for v in vectors)
    assert vectors[0] == vectors[2] and vectors[0] != vectors[1]
    assert r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens

    floats = client.embeddings.create(model=MODEL, input=texts[0], encoding_format="float")
    assert floats.data[0].embedding == vectors[0]  # float32 both ways, bit for bit


def test_embeddings_dimensions_and_similarity(client):
    r = client.embeddings.create(model=MODEL, input="Paris", dimensions=64)
    assert len(r.data[0].embedding) == 64 and abs(_norm(r.data[0].embedding) - 1) < 1e-5
    a, b, c = (d.embedding for d in client.embeddings.create(
        model=MODEL, input=["capital of France", "the capital city of France", "ripe yellow bananas"]).data)

    def cos(x, y):
        return sum(p * q for p, q in zip(x, y, strict=True))

    assert cos(a, b) > cos(a, c)  # shared words pull vectors together


def test_completions(client):
    r = client.completions.create(model=MODEL, prompt=["The capital of France is", "Bananas are"], max_tokens=5)
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.text and c.finish_reason in ("stop", "length") for c in r.choices)
    assert r.usage.completion_tokens <= 10 and r.usage.prompt_tokens > 0
    chunks = list(client.completions.create(model=MODEL, prompt="Hello there", max_tokens=4, stream=True,
                                            stream_options={"include_usage": True}))
    *texts, last = chunks
    assert last.choices == [] and last.usage.completion_tokens == len(texts) == 4
    assert texts[-1].choices[0].finish_reason == "length"


def test_responses(client):
    r = client.responses.create(model=MODEL, input="Tell me about Paris", instructions="Be brief.")
    assert r.object == "response" and r.status == "completed" and r.id.startswith("resp_")
    assert r.output_text and "Paris" in r.output_text
    assert r.output[0].type == "message" and r.output[0].content[0].type == "output_text"
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens


def test_responses_stream(client):
    events = list(client.responses.create(model=MODEL, input="Tell me about Paris", stream=True))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert text and final.output_text == text and final.usage.output_tokens == types.count(
        "response.output_text.delta")


def test_responses_parse_and_function_tools(client):
    r = client.responses.parse(model=MODEL, input="Weather in Paris?", text_format=GetWeather)
    assert isinstance(r.output_parsed, GetWeather)
    tool = {"type": "function", "name": "get_weather", "parameters": WEATHER["function"]["parameters"],
            "strict": True}
    r = client.responses.create(model=MODEL, input="Weather in Paris?", tools=[tool], tool_choice="required")
    [call] = r.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id
    jsonschema.validate(json.loads(call.arguments), tool["parameters"])


def test_errors_map_to_the_sdk_exceptions(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="gpt-4", input="hi")
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="hi", n=2)
