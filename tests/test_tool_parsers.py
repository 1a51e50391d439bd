"""Tool-call parsers (hermes, llama3_json, mistral): whole outputs, streams cut at random points
(whose pieces must add up to the whole-output result), malformed and hostile text."""

from __future__ import annotations

import json
import random

import pytest

from server.tool_parsers import ToolParser, get_tool_parser

WEATHER = '{"name": "get_weather", "arguments": {"city": "Paris", "days": [1, 2], "note": "a } and \\" inside"}}'
WEATHER_ARGS = '{"city": "Paris", "days": [1, 2], "note": "a } and \\" inside"}'

CASES = [  # parser, output text, expected content, expected [(name, arguments)]
    ("hermes", f"Let me look.\n<tool_call>\n{WEATHER}\n</tool_call>", "Let me look.\n",
     [("get_weather", WEATHER_ARGS)]),
    ("hermes", '<tool_call>{"name": "a", "arguments": {}}</tool_call>\n<tool_call>{"arguments": {"x": 1}, '
               '"name": "b"}</tool_call>', None, [("a", "{}"), ("b", '{"x": 1}')]),
    ("hermes", '<tool_call>{"name": "noargs"}</tool_call>', None, [("noargs", "{}")]),
    ("hermes", '<tool_call>{"name": "s", "arguments": "{\\"q\\": 2}"}</tool_call>', None, [("s", '{"q": 2}')]),
    ("llama3_json", '<|python_tag|>{"name": "f", "parameters": {"q": 1.5}}; {"name": "g", "parameters": {"s": "x;y"}}',
     None, [("f", '{"q": 1.5}'), ("g", '{"s": "x;y"}')]),
    ("llama3_json", f"  {WEATHER}", None, [("get_weather", WEATHER_ARGS)]),
    ("mistral", 'Sure. [TOOL_CALLS][{"name": "f", "arguments": {"x": 1}}, {"name": "g", "arguments": {}}]', "Sure. ",
     [("f", '{"x": 1}'), ("g", "{}")]),
    ("mistral", f'Checking.[TOOL_CALLS]get_weather[ARGS]{WEATHER_ARGS}[TOOL_CALLS]now[ARGS]{{}}', "Checking.",
     [("get_weather", WEATHER_ARGS), ("now", "{}")]),
]

PLAIN = [  # outputs with no call: all content, streamed or not
    ("hermes", "a < b and <tool but no call"),
    ("hermes", "Broken: <tool_call>{\"name\": \"f\", \"arguments\": {\"x\": }</tool_call>"),
    ("hermes", "Cut short <tool_call>{\"name\": \"f\", \"arguments\": {\"x\": 1"),
    ("llama3_json", "Hello {\"name\": \"f\"}"),
    ("llama3_json", "<|python"),
    ("mistral", "[TOOL_CALLS] not json at all"),
    ("mistral", "no calls [TOOL"),
    ("mistral", "[TOOL_CALLS]not a name[ARGS]{}"),
    ("mistral", "[TOOL_CALLS]f[ARGS] [1]"),
    ("mistral", "[TOOL_CALLS]f[ARGS]{\"a\": 1"),
]


def _stream(parser: ToolParser, text: str, rng: random.Random) -> tuple[str, list[tuple[str, str]], bool]:
    stream = parser.stream()
    content = ""
    calls: dict[int, list[str]] = {}
    ids: set[str] = set()
    pieces = []
    i = 0
    while i < len(text):
        n = rng.randint(1, 6)
        pieces.append(stream.feed(text[i:i + n]))
        i += n
    pieces.append(stream.finish())
    for piece in pieces:
        content += piece.content
        for delta in piece.tool_calls:
            wire = delta.to_openai()
            if delta.index not in calls:
                assert wire["id"] and wire["type"] == "function" and wire["function"]["name"]
                assert wire["id"] not in ids
                ids.add(wire["id"])
                calls[delta.index] = [wire["function"]["name"], ""]
            else:
                assert "id" not in wire and "name" not in wire["function"]
            calls[delta.index][1] += wire["function"]["arguments"]
    assert sorted(calls) == list(range(len(calls)))  # indices 0, 1, ... in order
    return content, [(name, args) for name, args in calls.values()], stream.tool_calls_started


@pytest.mark.parametrize("parser_name,text,content,calls", CASES)
def test_extract(parser_name: str, text: str, content: str | None, calls: list[tuple[str, str]]) -> None:
    result = get_tool_parser(parser_name).extract(text)
    assert result.tools_called
    assert result.content == content
    assert [(c.name, c.arguments) for c in result.tool_calls] == calls
    for call in result.tool_calls:
        assert isinstance(json.loads(call.arguments), dict)
        assert call.to_openai()["function"] == {"name": call.name, "arguments": call.arguments}
    if parser_name == "mistral":
        assert all(len(c.id) == 9 and c.id.isalnum() for c in result.tool_calls)
    else:
        assert all(c.id.startswith("call_") for c in result.tool_calls)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("parser_name,text,content,calls", CASES)
def test_stream_adds_up_to_extract(parser_name: str, text: str, content: str | None,
                                   calls: list[tuple[str, str]], seed: int) -> None:
    streamed_content, streamed_calls, started = _stream(get_tool_parser(parser_name), text, random.Random(seed))
    assert started
    assert streamed_content == (content or "")
    assert streamed_calls == calls


@pytest.mark.parametrize("parser_name,text", PLAIN)
def test_text_without_a_call_stays_content(parser_name: str, text: str) -> None:
    result = get_tool_parser(parser_name).extract(text)
    assert not result.tools_called and result.tool_calls == [] and result.content == text
    if "<tool_call>{" in text or "[ARGS]{" in text:
        return  # a named call that breaks later: a stream has sent its start (see the test below)
    content, calls, started = _stream(get_tool_parser(parser_name), text, random.Random(0))
    assert (content, calls, started) == (text, [], False)


def test_broken_call_in_a_stream_turns_the_rest_into_content() -> None:
    text = 'Hi <tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call> then text'
    content, calls, _ = _stream(get_tool_parser("hermes"), text, random.Random(1))
    assert calls == [("f", '{"x": 1}')] and content == "Hi then text"
    extracted = get_tool_parser("hermes").extract(text)
    assert extracted.content == "Hi then text" and [c.name for c in extracted.tool_calls] == ["f"]


@pytest.mark.parametrize("parser_name", ["hermes", "llama3_json", "mistral"])
def test_hostile_text_never_raises(parser_name: str) -> None:
    rng = random.Random(parser_name)
    alphabet = ['{', '}', '[', ']', '"', '\\', ':', ',', ';', ' ', 'name', 'arguments', 'parameters', 'x', '1',
                '<tool_call>', '</tool_call>', '[TOOL_CALLS]', '<|python_tag|>', '\n', 'é']
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        parser = get_tool_parser(parser_name)
        result = parser.extract(text)
        if not result.tools_called:
            assert result.content == text
        for call in result.tool_calls:
            assert isinstance(json.loads(call.arguments), dict)
        _stream(parser, text, rng)


def test_unknown_parser_is_named() -> None:
    with pytest.raises(ValueError, match="hermes"):
        get_tool_parser("nope")
