"""The shape every tool-call format shares, and the streaming state machine built on it.

A format says two things: where its tool region starts (a marker such as ``<tool_call>``, or
the output opening with ``{``), and which text may sit between call objects inside the region
(markers, ``;``, array brackets). Everything before the region is content; each call is a JSON
object read by ``json_scan.scan_call``. ``extract`` reads a finished output; ``stream`` returns
a ``ToolCallStream`` that turns text deltas into content and OpenAI ``tool_calls`` deltas, and
whose concatenated output equals what ``extract`` returns for the same text.

Text the format cannot read as calls stays content: a finished output with a truncated or
malformed call is all content; trailing text after complete calls is content too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from server.tool_parsers.json_scan import ContainerEnd, MalformedCall, PartialCall, scan_call, skip_whitespace
from server.tool_parsers.types import DeltaMessage, ExtractedToolCalls, ToolCall, ToolCallDelta, openai_call_id


class ToolParser:
    """Base of the formats; subclasses set ``separators`` and, if needed, ``split``."""

    name = ""
    start_marker = ""  # the text that opens the tool region
    separators: tuple[str, ...] = ()  # skipped between call objects (besides whitespace)
    new_call_id: Callable[[], str] = staticmethod(openai_call_id)

    def split(self, text: str, final: bool) -> tuple[int, int | None]:
        """(content_end, region_start): ``text[:content_end]`` is surely content, and the tool
        region starts at ``region_start`` (None: not seen yet). Default: at the start marker."""
        at = text.find(self.start_marker)
        if at >= 0:
            return at, at
        if final:
            return len(text), None
        return len(text) - partial_marker_length(text, self.start_marker), None

    def scan_region(self, text: str, start: int, final: bool) -> tuple[list[PartialCall], int | None]:
        """The calls of the region from ``start`` on, and the offset of text that is not a call
        (None if there is none)."""
        calls: list[PartialCall] = []
        i = start
        while True:
            i = self._skip_separators(text, i, final)
            if i >= len(text):
                return calls, None
            if text[i] != "{":
                return calls, i
            try:
                call = scan_call(text, i)
            except MalformedCall:
                return calls, i
            if call.complete and call.name is None:
                return calls, i
            calls.append(call)
            if not call.complete:
                return calls, None
            i = call.end  # type: ignore[assignment]

    def extract(self, text: str) -> ExtractedToolCalls:
        """Splits a finished output into content and tool calls."""
        content_end, region = self.split(text, final=True)
        if region is None:
            return ExtractedToolCalls(False, [], text)
        calls, stray = self.scan_region(text, region, final=True)
        if not calls or not all(c.complete for c in calls):
            return ExtractedToolCalls(False, [], text)
        tool_calls = [ToolCall(self.new_call_id(), c.name or "", _arguments_text(c)) for c in calls]
        content = text[:content_end] + (text[stray:] if stray is not None else "")
        return ExtractedToolCalls(True, tool_calls, content if content.strip() else None)

    def stream(self) -> ToolCallStream:
        return ToolCallStream(self)

    def _skip_separators(self, text: str, i: int, final: bool) -> int:
        """Past whitespace and separators; ``len(text)`` when only a separator's prefix remains."""
        while True:
            i = skip_whitespace(text, i)
            sep = next((s for s in self.separators if text.startswith(s, i)), None)
            if sep is None:
                break
            i += len(sep)
        rest = text[i:]
        if rest and not final and any(s.startswith(rest) for s in self.separators):
            return len(text)
        return i


def partial_marker_length(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that is a proper prefix of ``marker``."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


def _arguments_text(call: PartialCall) -> str:
    return call.arguments_json() if call.arguments else "{}"


@dataclasses.dataclass
class _SentCall:
    id: str
    arguments_sent: int = 0


class ToolCallStream:
    """Incremental parsing of one output: ``feed`` each text delta, ``finish`` at the end."""

    def __init__(self, parser: ToolParser) -> None:
        self._parser = parser
        self._text = ""
        self._content_sent = 0  # text[:_content_sent] went out as content (or is the region)
        self._region: int | None = None
        self._stray: int | None = None  # from here on, the region's text is content
        self._sent: list[_SentCall] = []
        self._complete: list[PartialCall] = []  # calls already read to their end
        self._resume = 0  # where to scan on: past the last complete call
        self._open: tuple[PartialCall, ContainerEnd] | None = None  # a call whose arguments are being written

    @property
    def tool_calls_started(self) -> bool:
        """Whether any tool call went out (the finish reason is then "tool_calls")."""
        return bool(self._sent)

    def feed(self, delta: str) -> DeltaMessage:
        self._text += delta
        return self._advance(final=False)

    def finish(self) -> DeltaMessage:
        """Whatever was held back (a partial marker that never completed goes out as content)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> DeltaMessage:
        out = DeltaMessage()
        if self._region is None:
            content_end, self._region = self._parser.split(self._text, final)
            out.content += self._take_content(content_end)
            if self._region is None:
                return out
            self._content_sent = self._resume = self._region
        if self._stray is None:
            calls, stray = self._scan(final)
            out.tool_calls = self._call_deltas(calls)
            while len(self._complete) < len(self._sent) and calls[len(self._complete)].complete:
                self._complete.append(calls[len(self._complete)])
                self._resume = self._complete[-1].end  # type: ignore[assignment]
            if stray is not None:  # text that is no call: content from there (from the region if no call went out)
                self._stray = self._content_sent = stray if self._sent else self._region
        if self._stray is not None:
            out.content += self._take_content(len(self._text))
        return out

    def _scan(self, final: bool) -> tuple[list[PartialCall], int | None]:
        """All calls so far: the complete ones, then what the text after them holds. While a call's
        arguments object is still open, only the new text is read."""
        if self._open is not None:
            call, tracker = self._open
            if tracker.advance(self._text) is None:
                call.arguments = self._text[call.arguments_start:]
                return [*self._complete, call], None
            self._open = None  # the arguments closed: read the call in full once more
        calls, stray = self._parser.scan_region(self._text, self._resume, final)
        last = calls[-1] if calls else None
        if last is not None and not last.arguments_done and last.arguments.startswith("{"):
            tracker = ContainerEnd(last.arguments_start)  # type: ignore[arg-type]
            tracker.advance(self._text)
            self._open = (last, tracker)
        return [*self._complete, *calls], stray

    def _take_content(self, end: int) -> str:
        piece = self._text[self._content_sent:end]
        self._content_sent = max(self._content_sent, end)
        return piece

    def _call_deltas(self, calls: list[PartialCall]) -> list[ToolCallDelta]:
        deltas: list[ToolCallDelta] = []
        for index, call in enumerate(calls):
            if call.name is None:
                break  # nothing of a call goes out before its name
            if index == len(self._sent):
                self._sent.append(_SentCall(self._parser.new_call_id()))
                deltas.append(ToolCallDelta(index, id=self._sent[index].id, name=call.name))
            fragment = self._arguments_fragment(call, self._sent[index])
            if fragment:
                if deltas and deltas[-1].index == index:
                    deltas[-1].arguments += fragment
                else:
                    deltas.append(ToolCallDelta(index, arguments=fragment))
        return deltas

    @staticmethod
    def _arguments_fragment(call: PartialCall, sent: _SentCall) -> str:
        if call.arguments.startswith("{"):
            text = call.arguments  # raw, as written: streams character by character
        elif call.complete:
            text = _arguments_text(call)  # a JSON-encoded string value, or no arguments at all
        else:
            return ""
        fragment = text[sent.arguments_sent:]
        sent.arguments_sent = len(text)
        return fragment
