"""``tool_choice: "required"`` and a named function, enforced through structured outputs.

When the client demands a call, the output is constrained, so it is always a valid call:
- a named function: the output *is* the arguments object, constrained by the function's
  parameters schema; the call is that text under the named function.
- "required": the output is a JSON array of ``{"name": <one of the tools>, "arguments": {...}}``
  (one item unless ``parallel_tool_calls``), each item's arguments constrained by its tool's schema.
Both stream like any tool parser's output: ``NamedCallStream`` sends each text delta as an
argument fragment, ``RequiredCallsParser`` reads the array with the shared call scanner.
"""

from __future__ import annotations

import json
from typing import Any

from engine.structured_output import StructuredOutputSpec
from server.tool_parsers.parser import ToolParser
from server.tool_parsers.tools import FunctionTool
from server.tool_parsers.types import DeltaMessage, ExtractedToolCalls, ToolCall, ToolCallDelta, openai_call_id


def named_function_spec(tool: FunctionTool) -> StructuredOutputSpec:
    """The output is the named function's arguments object."""
    return StructuredOutputSpec.json_schema(tool.parameters)


def required_calls_schema(tools: list[FunctionTool], parallel_tool_calls: bool = True) -> dict[str, Any]:
    """A JSON array of calls to the given tools with valid arguments; at least one call."""
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    schema: dict[str, Any] = {"type": "array", "items": calls[0] if len(calls) == 1 else {"anyOf": calls},
                              "minItems": 1}
    if not parallel_tool_calls:
        schema["maxItems"] = 1
    return schema


def required_calls_spec(tools: list[FunctionTool], parallel_tool_calls: bool = True) -> StructuredOutputSpec:
    return StructuredOutputSpec.json_schema(required_calls_schema(tools, parallel_tool_calls))


class RequiredCallsParser(ToolParser):
    """Reads the constrained output of ``tool_choice: "required"``: the region is the whole text."""

    name = "required"
    separators = ("[", ",", "]")

    def split(self, text: str, final: bool) -> tuple[int, int | None]:
        return 0, 0


def extract_named_call(tool: FunctionTool, text: str) -> ExtractedToolCalls:
    """The finished output of a named-function request as that one call."""
    try:
        arguments = json.loads(text)
    except json.JSONDecodeError:
        return ExtractedToolCalls(False, [], text)  # cut short (max_tokens): not a call
    if not isinstance(arguments, dict):
        return ExtractedToolCalls(False, [], text)
    return ExtractedToolCalls(True, [ToolCall(openai_call_id(), tool.name, text.strip())], None)


class NamedCallStream:
    """Streams a named-function output: id and name first, then each delta as an argument fragment."""

    def __init__(self, tool: FunctionTool) -> None:
        self._tool = tool
        self._id: str | None = None
        self._started = False

    @property
    def tool_calls_started(self) -> bool:
        return self._id is not None

    def feed(self, delta: str) -> DeltaMessage:
        if not self._started:
            delta = delta.lstrip()
            if not delta:
                return DeltaMessage()
            self._started = True
        if self._id is None:
            self._id = openai_call_id()
            return DeltaMessage(tool_calls=[ToolCallDelta(0, id=self._id, name=self._tool.name, arguments=delta)])
        return DeltaMessage(tool_calls=[ToolCallDelta(0, arguments=delta)] if delta else [])

    def finish(self) -> DeltaMessage:
        return DeltaMessage()
