"""Mistral's tokenizer-v11 call layout, ``[TOOL_CALLS]name[ARGS]{...}`` repeated, read as it grows.

The name is plain text up to ``[ARGS]``; the arguments are one JSON object. Calls are produced as
``PartialCall``s, so streaming and extraction share ``ToolParser``'s machinery.
"""

from __future__ import annotations

import re

from server.tool_parsers.json_scan import MalformedCall, PartialCall, check_arguments, skip_whitespace, value_end
from server.tool_parsers.parser import partial_marker_length

ARGS_MARKER = "[ARGS]"
_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def scan_named_args_calls(text: str, start: int, call_marker: str) -> tuple[list[PartialCall], int | None]:
    """The calls from ``start`` on and the offset of text that is not a call (None if none)."""
    calls: list[PartialCall] = []
    i = start
    while True:
        i = skip_whitespace(text, i)
        if text.startswith(call_marker, i):
            i += len(call_marker)
        elif i >= len(text) or call_marker.startswith(text[i:]):
            return calls, None
        elif calls:
            return calls, i
        try:
            call = _scan_one(text, i)
        except MalformedCall:
            return calls, i
        calls.append(call)
        if not call.complete:
            return calls, None
        i = call.end  # type: ignore[assignment]


def _scan_one(text: str, i: int) -> PartialCall:
    call = PartialCall()
    marker = text.find(ARGS_MARKER, i)
    name_end = marker if marker >= 0 else len(text) - partial_marker_length(text, ARGS_MARKER)
    name = text[i:name_end].strip()
    if name and not _NAME.fullmatch(name):
        raise MalformedCall(f"not a function name: {name[:40]!r}")
    if marker < 0:
        return call
    call.name = name
    j = skip_whitespace(text, marker + len(ARGS_MARKER))
    if j >= len(text):
        return call
    if text[j] != "{":
        raise MalformedCall("[ARGS] must be followed by a JSON object")
    end = value_end(text, j)
    call.arguments, call.arguments_start, call.arguments_done = text[j:end], j, end is not None
    if end is not None:
        check_arguments(call.arguments, "arguments")
        call.end = end
    return call
