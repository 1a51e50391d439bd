"""Tool calling: parsers that read calls out of model text (whole or streamed), validation of the
``tools`` a request declares, and the JSON schemas that force a call for ``tool_choice``."""

from server.tool_parsers.formats import TOOL_PARSERS, get_tool_parser
from server.tool_parsers.parser import ToolCallStream, ToolParser
from server.tool_parsers.types import DeltaMessage, ExtractedToolCalls, ToolCall, ToolCallDelta

__all__ = [
    "TOOL_PARSERS",
    "DeltaMessage",
    "ExtractedToolCalls",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallStream",
    "ToolParser",
    "get_tool_parser",
]
