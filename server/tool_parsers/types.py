"""Tool calls as OpenAI clients receive them: whole calls in a message, deltas in stream chunks."""

from __future__ import annotations

import dataclasses
import secrets
import string
from typing import Any

_ALPHANUMERIC = string.ascii_letters + string.digits


def openai_call_id() -> str:
    """``call_`` plus 24 random alphanumerics, as OpenAI's ids look."""
    return "call_" + "".join(secrets.choice(_ALPHANUMERIC) for _ in range(24))


def mistral_call_id() -> str:
    """Mistral's chat template only accepts 9 alphanumerics."""
    return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(9))


@dataclasses.dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text of an object

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclasses.dataclass
class ExtractedToolCalls:
    """A finished output split into tool calls and the text around them."""

    tools_called: bool
    tool_calls: list[ToolCall]
    content: str | None


@dataclasses.dataclass
class ToolCallDelta:
    """One piece of one call in a stream: the first piece of a call carries its id and name."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""

    def to_openai(self) -> dict[str, Any]:
        function: dict[str, Any] = {"arguments": self.arguments}
        if self.name is not None:
            function["name"] = self.name
        delta: dict[str, Any] = {"index": self.index, "function": function}
        if self.id is not None:
            delta.update(id=self.id, type="function")
        return delta


@dataclasses.dataclass
class DeltaMessage:
    """What one text delta turns into: content text and/or tool-call pieces (either may be empty)."""

    content: str = ""
    tool_calls: list[ToolCallDelta] = dataclasses.field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.tool_calls)
