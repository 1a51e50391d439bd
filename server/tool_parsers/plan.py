"""What a chat request's ``tools`` / ``tool_choice`` mean for this server: which tools go to the
chat template, which constraint (if any) forces a call, and how the output is read back.

- ``none``: tools may be shown to the template, the output is plain content.
- ``auto``: the model decides; the output is read with the server's ``--tool-call-parser``,
  which must be configured (``--enable-auto-tool-choice``), else the request is a 400.
- ``required`` / a named function: the output is constrained to a valid call (see
  ``forced_calls``) and read back as one; no parser option is needed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from engine.structured_output import StructuredOutputSpec
from server.tool_parsers.forced_calls import (
    NamedCallStream,
    RequiredCallsParser,
    extract_named_call,
    named_function_spec,
    required_calls_spec,
)
from server.tool_parsers.formats import get_tool_parser
from server.tool_parsers.parser import ToolCallStream, ToolParser
from server.tool_parsers.tools import FunctionTool, ToolChoice, ToolError, parse_tool_choice, parse_tools
from server.tool_parsers.types import ExtractedToolCalls


@dataclasses.dataclass
class ToolPlan:
    tools: list[FunctionTool]
    choice: ToolChoice
    constraint: StructuredOutputSpec | None  # forces the call for "required" / a named function
    parser: ToolParser | None  # reads calls out of free text ("auto")

    @property
    def parses_calls(self) -> bool:
        return self.choice.mode != "none"

    def extract(self, text: str) -> ExtractedToolCalls:
        """A finished output as content and calls."""
        if self.choice.mode == "function":
            return extract_named_call(self.choice.function, text)  # type: ignore[arg-type]
        if self.parser is None:
            return ExtractedToolCalls(False, [], text)
        return self.parser.extract(text)

    def stream(self) -> ToolCallStream | NamedCallStream | None:
        """A fresh incremental reader for one streamed choice (None: the text is all content)."""
        if self.choice.mode == "function":
            return NamedCallStream(self.choice.function)  # type: ignore[arg-type]
        return self.parser.stream() if self.parser is not None else None


def plan_tools(tools: Any, tool_choice: Any, parallel_tool_calls: bool | None,
               auto_parser: str | None) -> ToolPlan:
    """Validates the request's tool fields against the server's options; raises ``ToolError``."""
    parsed = parse_tools(tools) if tools is not None else []
    choice = parse_tool_choice(tool_choice, parsed)
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise ToolError("parallel_tool_calls must be a boolean", "parallel_tool_calls")
    parallel = parallel_tool_calls is not False
    if choice.mode == "auto":
        if auto_parser is None:
            raise ToolError('tool_choice "auto" needs the server started with --enable-auto-tool-choice and '
                            "--tool-call-parser", "tool_choice")
        return ToolPlan(parsed, choice, None, get_tool_parser(auto_parser))
    if choice.mode == "required":
        return ToolPlan(parsed, choice, required_calls_spec(parsed, parallel), RequiredCallsParser())
    if choice.mode == "function":
        return ToolPlan(parsed, choice, named_function_spec(choice.function), None)  # type: ignore[arg-type]
    return ToolPlan(parsed, choice, None, None)
