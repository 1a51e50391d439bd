"""Validation of a request's ``tools`` and ``tool_choice``, so a bad definition is a 400 naming it.

OpenAI's rules: at most 128 tools, each ``{"type": "function", "function": {"name", "description"?,
"parameters"?, "strict"?}}``, names of 1-64 characters from ``[a-zA-Z0-9_-]``, unique; parameters
a JSON Schema for an object (checked against the JSON Schema meta-schema here; whether the grammar
library can compile it is checked when a call is forced). ``tool_choice`` is "none", "auto",
"required" or ``{"type": "function", "function": {"name": ...}}`` naming a declared tool.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal

import jsonschema

from engine.request_errors import RequestValidationError
from engine.request_limits import MAX_TOOLS

__all__ = ["MAX_TOOLS", "FunctionTool", "ToolChoice", "ToolError", "parse_tool_choice", "parse_tools"]

_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")

ChoiceMode = Literal["none", "auto", "required", "function"]


class ToolError(RequestValidationError):
    """An invalid tool definition or tool choice; ``param`` names the field (for the 400)."""


@dataclasses.dataclass(frozen=True)
class FunctionTool:
    name: str
    parameters: dict[str, Any]  # a JSON Schema for the arguments object
    description: str | None = None
    strict: bool = False


@dataclasses.dataclass(frozen=True)
class ToolChoice:
    mode: ChoiceMode
    function: FunctionTool | None = None  # for mode "function"


def parse_tools(tools: Any) -> list[FunctionTool]:
    """The request's ``tools`` as ``FunctionTool``s; raises ``ToolError``."""
    if not isinstance(tools, list):
        raise ToolError("tools must be a list", "tools")
    if len(tools) > MAX_TOOLS:
        raise ToolError(f"tools has {len(tools)} entries; the limit is {MAX_TOOLS}", "tools")
    parsed = [_parse_tool(tool, f"tools[{i}]") for i, tool in enumerate(tools)]
    seen: set[str] = set()
    for i, tool in enumerate(parsed):
        if tool.name in seen:
            raise ToolError(f"tools[{i}].function.name {tool.name!r} is declared twice", f"tools[{i}].function.name")
        seen.add(tool.name)
    return parsed


def parse_tool_choice(choice: Any, tools: list[FunctionTool]) -> ToolChoice:
    """The request's ``tool_choice`` (None means "auto" with tools, "none" without)."""
    if choice is None:
        return ToolChoice("auto" if tools else "none")
    if choice in ("none", "auto", "required"):
        if choice == "required" and not tools:
            raise ToolError("tool_choice 'required' needs at least one tool in tools", "tool_choice")
        return ToolChoice(choice)
    if not isinstance(choice, dict) or choice.get("type") != "function" or not isinstance(choice.get("function"), dict):
        raise ToolError("tool_choice must be 'none', 'auto', 'required' or "
                        "{'type': 'function', 'function': {'name': ...}}", "tool_choice")
    name = choice["function"].get("name")
    tool = next((t for t in tools if t.name == name), None)
    if tool is None:
        raise ToolError(f"tool_choice names function {name!r}, which is not in tools", "tool_choice")
    return ToolChoice("function", tool)


def _parse_tool(tool: Any, where: str) -> FunctionTool:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise ToolError(f"{where} must be an object with type 'function'", where)
    function = tool.get("function")
    if not isinstance(function, dict):
        raise ToolError(f"{where}.function must be an object", f"{where}.function")
    name = function.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ToolError(f"{where}.function.name must be 1-64 characters of a-z, A-Z, 0-9, '_' or '-', got {name!r}",
                        f"{where}.function.name")
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise ToolError(f"{where}.function.description must be a string", f"{where}.function.description")
    strict = function.get("strict", False)
    if not isinstance(strict, bool):
        raise ToolError(f"{where}.function.strict must be a boolean", f"{where}.function.strict")
    parameters = _check_parameters(function.get("parameters"), f"{where}.function.parameters")
    return FunctionTool(name, parameters, description, strict)


def _check_parameters(parameters: Any, where: str) -> dict[str, Any]:
    if parameters is None:
        return {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise ToolError(f"{where} must be a JSON Schema object", where)
    if parameters.get("type", "object") != "object":
        raise ToolError(f"{where} must describe an object (type 'object'), got type {parameters['type']!r}", where)
    try:
        jsonschema.validators.validator_for(parameters).check_schema(parameters)
    except jsonschema.SchemaError as err:
        path = "".join(f"[{p!r}]" for p in err.path)
        raise ToolError(f"{where}{path} is not a valid JSON Schema: {err.message}", where) from None
    return parameters
