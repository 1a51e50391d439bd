"""Reasoning output: a thinking model's ``<think>...</think>`` goes to ``reasoning_content``, the
rest to ``content``, for whole outputs (``extract``) and streams (``stream``).

- ``deepseek_r1`` (DeepSeek-R1 and its distills, QwQ, Qwen3 "thinking" checkpoints whose template
  opens ``<think>`` in the prompt): the output starts in reasoning; a leading ``<think>`` is
  dropped; ``</think>`` switches to content. Without ``</think>`` (cut short) it is all reasoning.
- ``qwen3`` (Qwen3 hybrid models): reasoning only when the output opens with ``<think>`` (thinking
  switched off, the model writes no tags and everything is content); ``</think>`` ends it.
A stream holds back a tag's first characters until it knows whether the tag completes, so no
tag text ever leaks into either field; streamed pieces concatenate to what ``extract`` returns.
"""

from __future__ import annotations

import dataclasses

from server.tool_parsers.parser import partial_marker_length

START_TAG, END_TAG = "<think>", "</think>"


@dataclasses.dataclass
class ReasoningDelta:
    reasoning: str = ""
    content: str = ""


class ReasoningParser:
    name = ""
    starts_in_reasoning = False  # deepseek_r1: True; qwen3: only after a leading <think>

    def extract(self, text: str) -> tuple[str | None, str | None]:
        """(reasoning_content, content) of a finished output; None for an empty part."""
        stream = self.stream()
        first, last = stream.feed(text), stream.finish()
        reasoning, content = first.reasoning + last.reasoning, first.content + last.content
        return (reasoning or None) if stream.saw_reasoning else None, content or None

    def stream(self) -> ReasoningStream:
        return ReasoningStream(self.starts_in_reasoning)


class DeepSeekR1ReasoningParser(ReasoningParser):
    name = "deepseek_r1"
    starts_in_reasoning = True


class Qwen3ReasoningParser(ReasoningParser):
    name = "qwen3"


class ReasoningStream:
    """States: "opening" (leading whitespace and an optional <think> not yet settled),
    "reasoning" (until </think>), "content"."""

    def __init__(self, starts_in_reasoning: bool) -> None:
        self._starts_in_reasoning = starts_in_reasoning
        self._state = "opening"
        self._pending = ""  # text not yet sent: a possible tag prefix, or the undecided opening
        self.saw_reasoning = starts_in_reasoning

    @property
    def reasoning_ended(self) -> bool:
        """True once the answer part has begun (structured outputs apply from here)."""
        return self._state == "content"

    def feed(self, delta: str) -> ReasoningDelta:
        self._pending += delta
        return self._advance(final=False)

    def finish(self) -> ReasoningDelta:
        return self._advance(final=True)

    def _advance(self, final: bool) -> ReasoningDelta:
        out = ReasoningDelta()
        if self._state == "opening" and not self._open(final):
            return out
        if self._state == "reasoning":
            at = self._pending.find(END_TAG)
            if at < 0:
                keep = 0 if final else partial_marker_length(self._pending, END_TAG)
                out.reasoning = self._pending[: len(self._pending) - keep]
                self._pending = self._pending[len(self._pending) - keep:]
                return out
            out.reasoning = self._pending[:at]
            self._pending = self._pending[at + len(END_TAG):]
            self._state = "content"
        out.content, self._pending = self._pending, ""
        return out

    def _open(self, final: bool) -> bool:
        """Settles the opening; False while it is still undecided."""
        head = self._pending.lstrip()
        if head.startswith(START_TAG):
            self._pending = head[len(START_TAG):]
            self._state = "reasoning"
            self.saw_reasoning = True
            return True
        if not final and START_TAG.startswith(head):  # only whitespace or a tag prefix so far
            return False
        self._state = "reasoning" if self._starts_in_reasoning else "content"
        return True


REASONING_PARSERS: dict[str, type[ReasoningParser]] = {
    parser.name: parser for parser in (DeepSeekR1ReasoningParser, Qwen3ReasoningParser)
}


def get_reasoning_parser(name: str) -> ReasoningParser:
    """The parser registered as ``name`` (the ``--reasoning-parser`` value)."""
    try:
        return REASONING_PARSERS[name]()
    except KeyError:
        raise ValueError(f"unknown reasoning parser {name!r}; choose from "
                         f"{', '.join(sorted(REASONING_PARSERS))}") from None
