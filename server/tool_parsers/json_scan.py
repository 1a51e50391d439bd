"""Reading tool-call JSON objects out of text that may still be growing (a stream).

``scan_call`` walks one ``{"name": ..., "arguments": {...}}`` object from its opening brace and
reports what is known so far: the name once its string is complete, and the raw text of the
arguments value (which streams out as argument fragments, character for character the text the
model wrote). It never guesses: a value still being written is either incomplete or, for the
arguments, its prefix. Text that cannot become a call raises ``MalformedCall``.
"""

from __future__ import annotations

import dataclasses
import json

ARGUMENT_KEYS = ("arguments", "parameters")
_WHITESPACE = " \t\r\n"
_SCALAR_END = ",}] \t\r\n"


class MalformedCall(ValueError):
    """The text is not (the start of) a tool-call object."""


@dataclasses.dataclass
class PartialCall:
    name: str | None = None  # set once the name's string is complete
    arguments: str = ""  # raw text of the arguments value so far
    arguments_done: bool = False
    end: int | None = None  # index past the closing brace, once the object is complete

    @property
    def complete(self) -> bool:
        return self.end is not None

    def arguments_json(self) -> str:
        """The finished arguments as JSON text (a JSON-encoded string value is unwrapped)."""
        if not self.arguments_done:
            return "{}"
        value = json.loads(self.arguments)
        return value if isinstance(value, str) else self.arguments


def skip_whitespace(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WHITESPACE:
        i += 1
    return i


def string_end(text: str, i: int) -> int | None:
    """Index past the JSON string starting at ``text[i] == '"'``; None if it is not closed yet."""
    i += 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
        elif text[i] == '"':
            return i + 1
        else:
            i += 1
    return None


def value_end(text: str, i: int) -> int | None:
    """Index past the JSON value starting at ``text[i]``; None if it may still be growing."""
    if text[i] == '"':
        return string_end(text, i)
    if text[i] in "{[":
        return _container_end(text, i)
    j = i
    while j < len(text) and text[j] not in _SCALAR_END:
        j += 1
    return j if j < len(text) else None  # a number at the very end may have more digits to come


def _container_end(text: str, i: int) -> int | None:
    depth = 0
    while i < len(text):
        c = text[i]
        if c == '"':
            end = string_end(text, i)
            if end is None:
                return None
            i = end
            continue
        if c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def scan_call(text: str, start: int) -> PartialCall:
    """What is known of the call object whose ``{`` is at ``text[start]``."""
    call = PartialCall()
    i = start + 1
    while True:
        i = skip_whitespace(text, i)
        if i >= len(text):
            return call
        if text[i] == "}":
            call.end = i + 1
            return call
        if text[i] == ",":
            i += 1
            continue
        if text[i] != '"':
            raise MalformedCall(f"expected a key at offset {i}")
        next_i = _scan_member(text, i, call)
        if next_i is None:
            return call
        i = next_i


def _scan_member(text: str, i: int, call: PartialCall) -> int | None:
    """Reads ``"key": value`` at ``i`` into ``call``; returns the index past it, None if unfinished."""
    key_end = string_end(text, i)
    if key_end is None:
        return None
    key = _decode(text[i:key_end])
    i = skip_whitespace(text, key_end)
    if i >= len(text):
        return None
    if text[i] != ":":
        raise MalformedCall(f"expected ':' after key {key!r}")
    i = skip_whitespace(text, i + 1)
    if i >= len(text):
        return None
    end = value_end(text, i)
    if key in ARGUMENT_KEYS:
        if text[i] not in '{"':
            raise MalformedCall(f"{key} must be an object")
        call.arguments = text[i:end]
        call.arguments_done = end is not None
    elif key == "name" and end is not None:
        name = _decode(text[i:end])
        if not isinstance(name, str):
            raise MalformedCall("the function name must be a string")
        call.name = name
    if end is not None and key in ARGUMENT_KEYS:
        _check_arguments(call.arguments, key)
    return end


def _decode(raw: str) -> object:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        raise MalformedCall(f"invalid JSON {raw[:40]!r}: {err}") from None


def _check_arguments(raw: str, key: str) -> None:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as err:
        raise MalformedCall(f"{key} is not valid JSON: {err}") from None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise MalformedCall(f"{key} string does not hold JSON: {err}") from None
    if not isinstance(value, dict):
        raise MalformedCall(f"{key} must be a JSON object")
