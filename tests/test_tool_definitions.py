"""Tool definitions and tool_choice: validation (typed errors naming the field) and the forced-call
grammars for "required" / a named function, driven through the real grammar compiler."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import jsonschema
import pytest

from engine.structured_output import GrammarCompiler, GrammarMatcher
from server.tool_parsers.forced_calls import (
    NamedCallStream,
    RequiredCallsParser,
    extract_named_call,
    named_function_spec,
    required_calls_spec,
)
from server.tool_parsers.tools import MAX_TOOLS, ToolError, parse_tool_choice, parse_tools

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                    "unit": {"enum": ["c", "f"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
CLOCK = {"type": "function", "function": {"name": "now"}}


def test_valid_tools_and_choices() -> None:
    tools = parse_tools([WEATHER, CLOCK])
    assert [t.name for t in tools] == ["get_weather", "now"]
    assert tools[1].parameters == {"type": "object", "properties": {}}
    assert parse_tool_choice(None, tools).mode == "auto"
    assert parse_tool_choice(None, []).mode == "none"
    assert parse_tool_choice("required", tools).mode == "required"
    named = parse_tool_choice({"type": "function", "function": {"name": "now"}}, tools)
    assert named.mode == "function" and named.function is tools[1]


def _with(path: list[Any], value: Any) -> dict[str, Any]:
    tool = copy.deepcopy(WEATHER)
    target = tool
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return tool


@pytest.mark.parametrize("tools,param", [
    ("not a list", "tools"),
    ([CLOCK] * (MAX_TOOLS + 1), "tools"),
    ([{"type": "retrieval"}], "tools[0]"),
    ([{"type": "function", "function": "f"}], "tools[0].function"),
    ([_with(["function", "name"], "has space")], "tools[0].function.name"),
    ([_with(["function", "name"], "x" * 65)], "tools[0].function.name"),
    ([_with(["function", "description"], 3)], "tools[0].function.description"),
    ([_with(["function", "strict"], "yes")], "tools[0].function.strict"),
    ([_with(["function", "parameters"], [1])], "tools[0].function.parameters"),
    ([_with(["function", "parameters"], {"type": "string"})], "tools[0].function.parameters"),
    ([_with(["function", "parameters", "properties", "city", "type"], "text")], "tools[0].function.parameters"),
    ([_with(["function", "parameters", "required"], "city")], "tools[0].function.parameters"),
    ([CLOCK, CLOCK], "tools[1].function.name"),
])
def test_invalid_tools_name_the_field(tools: Any, param: str) -> None:
    with pytest.raises(ToolError) as err:
        parse_tools(tools)
    assert err.value.param == param and str(err.value)


@pytest.mark.parametrize("choice", ["always", {"type": "function", "function": {"name": "missing"}},
                                    {"type": "function"}, 3])
def test_invalid_tool_choice(choice: Any) -> None:
    with pytest.raises(ToolError) as err:
        parse_tool_choice(choice, parse_tools([WEATHER]))
    assert err.value.param == "tool_choice"
    with pytest.raises(ToolError):
        parse_tool_choice("required", [])


@pytest.fixture(scope="module")
def compiler(smollm_tokenizer: Any) -> GrammarCompiler:
    return GrammarCompiler.from_tokenizer(smollm_tokenizer)


def _random_output(matcher: GrammarMatcher, tokenizer: Any, rng: random.Random, limit: int = 400) -> str:
    """A random walk through the allowed tokens, leaning towards short tokens that close things."""
    eos = min(tokenizer.eos_token_ids)
    closers = {ids[0] for s in ('"', "}", "]", '"}', "}]", '",') if len(ids := tokenizer.encode(s, False)) == 1}
    out: list[int] = []
    for _ in range(limit):
        allowed = matcher.allowed_token_ids().tolist()
        if eos in allowed:
            break
        closing = [t for t in allowed if t in closers]
        token = rng.choice(closing) if closing and rng.random() < 0.5 else rng.choice(allowed)
        assert matcher.accept_token(token)
        out.append(token)
    assert matcher.is_accepting
    return tokenizer.decode(out)


@pytest.mark.parametrize("seed", range(3))
def test_required_choice_always_yields_valid_calls(compiler: GrammarCompiler, smollm_tokenizer: Any,
                                                   seed: int) -> None:
    tools = parse_tools([WEATHER, CLOCK])
    spec = required_calls_spec(tools, parallel_tool_calls=False)
    text = _random_output(compiler.matcher(spec), smollm_tokenizer, random.Random(seed))
    extracted = RequiredCallsParser().extract(text)
    assert extracted.tools_called and len(extracted.tool_calls) == 1, text
    by_name = {t.name: t for t in tools}
    for call in extracted.tool_calls:
        jsonschema.validate(json.loads(call.arguments), by_name[call.name].parameters)


def test_named_function_yields_its_arguments(compiler: GrammarCompiler, smollm_tokenizer: Any) -> None:
    tool = parse_tools([WEATHER])[0]
    text = _random_output(compiler.matcher(named_function_spec(tool)), smollm_tokenizer, random.Random(7))
    extracted = extract_named_call(tool, text)
    assert extracted.tools_called and extracted.tool_calls[0].name == "get_weather"
    jsonschema.validate(json.loads(extracted.tool_calls[0].arguments), tool.parameters)
    stream = NamedCallStream(tool)
    pieces = [stream.feed(" "), stream.feed(text[:5]), stream.feed(text[5:]), stream.finish()]
    deltas = [d for p in pieces for d in p.tool_calls]
    assert deltas[0].id and deltas[0].name == "get_weather"
    assert "".join(d.arguments for d in deltas) == text.strip()
    assert not extract_named_call(tool, text[:-1]).tools_called  # cut short: not a call


def test_required_calls_stream(compiler: GrammarCompiler) -> None:
    text = '[{"name": "now", "arguments": {}}, {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}]'
    stream = RequiredCallsParser().stream()
    deltas = [d for i in range(0, len(text), 3) for d in stream.feed(text[i:i + 3]).tool_calls]
    deltas += stream.finish().tool_calls
    assert [d.name for d in deltas if d.name] == ["now", "get_weather"]
    assert "".join(d.arguments for d in deltas if d.index == 1) == '{"city": "Oslo", "unit": "c"}'
