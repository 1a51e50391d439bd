"""Tool plans (tool_choice against the server's options) and reading a chat choice into reasoning,
content and tool calls, whole and streamed."""

from __future__ import annotations

import json
import random

import pytest

from server.chat_output import ChatDeltaStream, finish_reason, parse_message
from server.reasoning_parsers import get_reasoning_parser
from server.tool_parsers.plan import plan_tools
from server.tool_parsers.tools import ToolError

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'


def test_plans() -> None:
    with pytest.raises(ToolError, match="enable-auto-tool-choice") as err:
        plan_tools(TOOLS, "auto", None, None)
    assert err.value.param == "tool_choice"
    with pytest.raises(ToolError):
        plan_tools(TOOLS, "auto", "yes", "hermes")  # type: ignore[arg-type]
    auto = plan_tools(TOOLS, None, None, "hermes")
    assert auto.choice.mode == "auto" and auto.constraint is None and auto.parser is not None
    none = plan_tools(TOOLS, "none", None, None)
    assert not none.parses_calls and none.stream() is None
    required = plan_tools(TOOLS, "required", False, None)
    schema = json.loads(required.constraint.text)
    assert required.constraint.kind == "json_schema" and schema["maxItems"] == 1
    named = plan_tools(TOOLS, {"type": "function", "function": {"name": "get_weather"}}, None, None)
    assert json.loads(named.constraint.text) == TOOLS[0]["function"]["parameters"]
    assert plan_tools(None, None, None, None).choice.mode == "none"


@pytest.mark.parametrize("reasoning_name,tool_choice,text,expected", [
    (None, "auto", f"Let me check.\n{CALL}", (None, "Let me check.\n", ["get_weather"])),
    ("deepseek_r1", "auto", f"The user wants weather.</think>\n\n{CALL}",
     ("The user wants weather.", None, ["get_weather"])),  # whitespace-only content is no content
    ("qwen3", "auto", "<think>easy</think>It is sunny.", ("easy", "It is sunny.", [])),
    ("qwen3", "none", f"<think>x</think>{CALL}", ("x", CALL, [])),
    (None, {"type": "function", "function": {"name": "get_weather"}}, '{"city": "Oslo"}',
     (None, None, ["get_weather"])),
    (None, "required", '[{"name": "get_weather", "arguments": {"city": "Rome"}}]', (None, None, ["get_weather"])),
])
def test_whole_and_streamed_agree(reasoning_name: str | None, tool_choice: object, text: str,
                                  expected: tuple[str | None, str | None, list[str]]) -> None:
    reasoning = get_reasoning_parser(reasoning_name) if reasoning_name else None
    plan = plan_tools(TOOLS, tool_choice, None, "hermes")
    parts = parse_message(text, reasoning, plan)
    assert (parts.reasoning_content, parts.content, [c.name for c in parts.tool_calls]) == expected
    for seed in range(4):
        rng = random.Random(seed)
        stream = ChatDeltaStream(reasoning, plan)
        pieces, i = [], 0
        while i < len(text):
            n = rng.randint(1, 7)
            pieces.append(stream.feed(text[i:i + n], final=seed % 2 == 1 and i + n >= len(text)))
            i += n
        if seed % 2 == 0:  # the end comes with the last delta (odd seeds) or on its own (even seeds)
            pieces.append(stream.finish())
        assert "".join(p.reasoning_content for p in pieces) == (parts.reasoning_content or "")
        assert "".join(p.content for p in pieces).strip() == (parts.content or "").strip()
        names = [d.name for p in pieces for d in p.tool_calls if d.name]
        arguments = "".join(d.arguments for p in pieces for d in p.tool_calls)
        assert names == [c.name for c in parts.tool_calls]
        assert arguments == "".join(c.arguments for c in parts.tool_calls)
        assert stream.called_tools == bool(parts.tool_calls)
        assert finish_reason("stop", stream.called_tools) == ("tool_calls" if parts.tool_calls else "stop")
    assert finish_reason("length", True) == "length"
