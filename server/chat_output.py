"""Reading one chat choice's generated text into the assistant message's parts: reasoning
(``--reasoning-parser``), content, and tool calls (``ToolPlan``), whole or as stream deltas.

Reasoning comes first in the text; what follows it is the answer, which is read for tool calls.
``finish_reason`` becomes "tool_calls" when the answer holds calls (OpenAI's rule).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from server.reasoning_parsers import ReasoningParser
from server.tool_parsers.plan import ToolPlan
from server.tool_parsers.types import ToolCall, ToolCallDelta


@dataclasses.dataclass
class ChatMessageParts:
    reasoning_content: str | None
    content: str | None
    tool_calls: list[ToolCall]


@dataclasses.dataclass
class ChatDelta:
    reasoning_content: str = ""
    content: str = ""
    tool_calls: list[ToolCallDelta] = dataclasses.field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.reasoning_content or self.content or self.tool_calls)


def parse_message(text: str, reasoning: ReasoningParser | None, tools: ToolPlan | None) -> ChatMessageParts:
    """A finished choice's text as an assistant message's parts."""
    reasoning_content, answer = reasoning.extract(text) if reasoning is not None else (None, text)
    if tools is None or not tools.parses_calls:
        return ChatMessageParts(reasoning_content, answer, [])
    extracted = tools.extract(answer or "")
    if not extracted.tools_called:
        return ChatMessageParts(reasoning_content, answer, [])
    return ChatMessageParts(reasoning_content, extracted.content, extracted.tool_calls)


def finish_reason(reason: str | None, called_tools: bool) -> str | None:
    """OpenAI reports "tool_calls" for a choice that ended with calls (not "stop")."""
    return "tool_calls" if called_tools and reason == "stop" else reason


class ChatDeltaStream:
    """One streamed choice: ``feed`` each text delta, with ``final`` on its last one (or call
    ``finish``), so held-back text (a partial tag or marker) goes out."""

    def __init__(self, reasoning: ReasoningParser | None, tools: ToolPlan | None) -> None:
        self._reasoning = reasoning.stream() if reasoning is not None else None
        self._tools: Any = tools.stream() if tools is not None and tools.parses_calls else None

    @property
    def called_tools(self) -> bool:
        return self._tools is not None and self._tools.tool_calls_started

    def feed(self, text: str, final: bool = False) -> ChatDelta:
        out = ChatDelta()
        if self._reasoning is not None:
            piece = self._reasoning.feed(text)
            if final:
                last = self._reasoning.finish()
                piece.reasoning, piece.content = piece.reasoning + last.reasoning, piece.content + last.content
            out.reasoning_content, text = piece.reasoning, piece.content
        if self._tools is None:
            out.content = text
            return out
        parts = [self._tools.feed(text)] if text else []
        if final:
            parts.append(self._tools.finish())
        for part in parts:
            out.content += part.content
            out.tool_calls.extend(part.tool_calls)
        return out

    def finish(self) -> ChatDelta:
        return self.feed("", final=True)
