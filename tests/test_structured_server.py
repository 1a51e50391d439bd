"""Structured outputs, tool calls and reasoning through the live server (engine core in its own
process) with the official openai client, on the tiny random model: a constraint decides the text
whatever the weights say, so auto tool calls and reasoning splits are scripted by forcing the
model's text with a regex. Greedy throughout, so the session server compiles few new programs.
Bad constraints are 400s in OpenAI's shape naming their field, whether the API server refuses them
or the engine core's grammar compiler does, and the server goes on serving."""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import httpx
import openai
import pydantic
import pytest
from litestar.testing import TestClient
from openai.lib._pydantic import to_strict_json_schema

from engine.request_limits import MAX_SPEC_CHARS, MAX_TOOLS
from server import ServerSettings

MESSAGES: list[Any] = [{"role": "user", "content": "Give me the data."}]
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 10}}, "required": ["city"],
    "additionalProperties": False}}}


class Pet(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=8)
    age: int = pydantic.Field(ge=0, le=30)


@pytest.fixture(scope="module")
def client(tiny_server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{tiny_server.url}/v1", api_key="x", max_retries=0)


def test_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(model="tiny", messages=MESSAGES, response_format=Pet,
                                               max_tokens=60, temperature=0)
    message = completion.choices[0].message
    assert isinstance(message.parsed, Pet), message.content


def test_response_format_json_schema_and_json_object(client: openai.OpenAI) -> None:
    schema = to_strict_json_schema(Pet)  # additionalProperties false: no extra keys to ramble in
    pet: Any = {"type": "json_schema", "json_schema": {"name": "pet", "schema": schema, "strict": True}}
    out = client.chat.completions.create(model="tiny", messages=MESSAGES, response_format=pet, max_tokens=60,
                                         temperature=0)
    Pet.model_validate_json(out.choices[0].message.content or "")
    # Any JSON object: a random model may write one long key until max_tokens; what it wrote is JSON so far.
    out = client.chat.completions.create(model="tiny", messages=MESSAGES, response_format={"type": "json_object"},
                                         max_tokens=40, temperature=0)
    choice = out.choices[0]
    assert (choice.message.content or "").lstrip().startswith("{")
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.message.content or ""), dict)


def test_guided_fields_on_completions_and_chat(client: openai.OpenAI) -> None:
    date = client.completions.create(model="tiny", prompt="Today is", max_tokens=20, temperature=0,
                                     extra_body={"guided_regex": r"[0-9]{4}-[0-9]{2}-[0-9]{2}"})
    assert re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", date.choices[0].text)
    assert date.choices[0].finish_reason == "stop"
    for extra in ({"structured_outputs": {"choice": ["red", "green"]}}, {"guided_choice": ["red", "green"]}):
        out = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=5, temperature=0,
                                             extra_body=extra)
        assert out.choices[0].message.content in ("red", "green")


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}],
                         ids=["required", "named"])
def test_forced_tool_calls_whole_and_streamed(client: openai.OpenAI, tool_choice: Any) -> None:
    fields: dict[str, Any] = {"model": "tiny", "messages": MESSAGES, "tools": [WEATHER_TOOL],
                              "tool_choice": tool_choice, "parallel_tool_calls": False,  # one call: short
                              "max_tokens": 80, "temperature": 0}
    choice = client.chat.completions.create(**fields).choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]
    assert isinstance(arguments["city"], str) and set(arguments) == {"city"}
    chunks = [c for c in client.chat.completions.create(**fields, stream=True) if c.choices]
    pieces = [t for c in chunks for t in c.choices[0].delta.tool_calls or []]
    assert pieces[0].id and pieces[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert "".join(p.function.arguments or "" for p in pieces) == call.function.arguments  # type: ignore[union-attr]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


SCHEMA_FRAME = {"name": "x", "schema": {"type": "frob"}}


@pytest.mark.parametrize("body,param", [
    ({"response_format": {"type": "json_schema", "json_schema": SCHEMA_FRAME}}, "response_format"),  # core compile
    ({"guided_regex": "(?<=a)b"}, "guided_regex"),  # an unsupported regex feature, found by the core's compiler
    ({"structured_outputs": {"grammar": "start: nope"}}, "structured_outputs"),
    ({"guided_json": "{not json"}, "guided_json"),
    ({"guided_regex": "a" * (MAX_SPEC_CHARS + 1)}, "guided_regex"),
    ({"structured_outputs": {"regex": "a", "whitespace_pattern": " "}}, "structured_outputs"),
    ({"response_format": {"type": "json_object"}, "guided_choice": ["a"]}, "guided_choice"),  # two at once
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}],
      "tool_choice": "required"}, "tools[0].function.parameters"),
    ({"tools": [WEATHER_TOOL]}, "tool_choice"),  # auto needs --enable-auto-tool-choice
    ({"tools": [WEATHER_TOOL], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [WEATHER_TOOL], "tool_choice": "none", "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
])
def test_bad_constraints_are_400s_and_the_server_goes_on(tiny_server: Any, body: dict[str, Any], param: str) -> None:
    with httpx.Client(base_url=tiny_server.url, timeout=60) as http:
        response = http.post("/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES, **body})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == param and error["type"] == "BadRequestError" and error["code"] == 400
        ok = http.post("/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES, "max_tokens": 2,
                                                     "temperature": 0})
        assert ok.status_code == 200


def test_the_openai_client_sees_a_compile_error_as_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="look"):
        client.completions.create(model="tiny", prompt="x", max_tokens=3, extra_body={"guided_regex": "(?=x)y"})


SCRIPTED_CALL = (r'<think>weather first</think><tool_call>\n\{"name": "get_weather", "arguments": '
                 r'\{"city": "Oslo"\}\}\n</tool_call>')


def test_auto_tool_calls_and_reasoning_whole_and_streamed(tiny_server: Any) -> None:
    app = tiny_server.app_for(6, ServerSettings(served_model_names=["tiny"], model_root="tiny",
                                                enable_auto_tool_choice=True, tool_call_parser="hermes",
                                                reasoning_parser="qwen3"))
    body = {"model": "tiny", "messages": MESSAGES, "tools": [WEATHER_TOOL], "max_tokens": 80, "temperature": 0,
            "guided_regex": SCRIPTED_CALL}
    with TestClient(app) as http:
        for _ in range(200):
            if http.get("/health").status_code == 200:
                break
            threading.Event().wait(0.05)
        whole = http.post("/v1/chat/completions", json=body).json()["choices"][0]
        assert whole["finish_reason"] == "tool_calls"
        assert whole["message"]["reasoning_content"] == "weather first" and not whole["message"]["content"]
        assert whole["message"]["tool_calls"][0]["function"] == {"name": "get_weather",
                                                                 "arguments": '{"city": "Oslo"}'}
        chunks = []
        with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    chunks.append(json.loads(line[6:]))
        deltas = [c["choices"][0] for c in chunks if c["choices"]]
        reasoning = "".join(d["delta"].get("reasoning_content") or "" for d in deltas)
        calls = [t for d in deltas for t in d["delta"].get("tool_calls") or []]
        assert reasoning == "weather first"
        assert calls[0]["function"]["name"] == "get_weather" and calls[0]["id"]
        assert "".join(t["function"].get("arguments", "") for t in calls) == '{"city": "Oslo"}'
        assert deltas[-1]["finish_reason"] == "tool_calls"


def test_openapi_shows_the_new_fields_and_their_bounds(tiny_server: Any) -> None:
    spec = httpx.get(f"{tiny_server.url}/docs/openapi.json", timeout=60).json()
    chat = json.dumps(spec["components"]["schemas"]["ChatCompletionRequest"]["properties"])
    for field in ("response_format", "structured_outputs", "guided_regex", "guided_choice", "tools", "tool_choice",
                  "parallel_tool_calls"):
        assert f'"{field}"' in chat, field
    assert f'"maxLength": {MAX_SPEC_CHARS}' in chat and f'"maxItems": {MAX_TOOLS}' in chat
