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
import re

ARGUMENT_KEYS = ("arguments", "parameters")
_WHITESPACE = " \t\r\n"
_SCALAR_END = ",}] \t\r\n"
_STRING_BODY = re.compile(r'(?:[^"\\]|\\.)*"', re.DOTALL)  # the rest of a string, closing quote included
_STRUCTURAL = re.compile(r'["{}\[\]]')


class MalformedCall(ValueError):
    """The text is not (the start of) a tool-call object."""


@dataclasses.dataclass
class PartialCall:
    name: str | None = None  # set once the name's string is complete
    arguments: str = ""  # raw text of the arguments value so far
    arguments_start: int | None = None  # where the arguments value starts in the text
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
    match = _STRING_BODY.match(text, i + 1)
    return match.end() if match else None


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
    while True:
        special = _STRUCTURAL.search(text, i)
        if special is None:
            return None
        c, i = special.group(), special.start()
        if c == '"':
            end = string_end(text, i)
            if end is None:
                return None
            i = end
            continue
        depth += 1 if c in "{[" else -1
        i += 1
        if depth == 0:
            return i


class ContainerEnd:
    """Finds where the object or array starting at ``start`` ends, reading only the text added
    since the last call: keeps a long arguments value from being rescanned on every delta."""

    def __init__(self, start: int) -> None:
        self._pos = start
        self._depth = 0
        self._in_string = False
        self._escaped = False

    def advance(self, text: str) -> int | None:
        """Index past the container's end, or None if the text does not reach it yet."""
        for i in range(self._pos, len(text)):
            c = text[i]
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif c == "\\":
                    self._escaped = True
                elif c == '"':
                    self._in_string = False
            elif c == '"':
                self._in_string = True
            elif c in "{[":
                self._depth += 1
            elif c in "}]":
                self._depth -= 1
                if self._depth == 0:
                    return i + 1
        self._pos = len(text)
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
        call.arguments_start = i
        call.arguments_done = end is not None
    elif key == "name" and end is not None:
        name = _decode(text[i:end])
        if not isinstance(name, str):
            raise MalformedCall("the function name must be a string")
        call.name = name
    if end is not None and key in ARGUMENT_KEYS:
        check_arguments(call.arguments, key)
    return end


def _decode(raw: str) -> object:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        raise MalformedCall(f"invalid JSON {raw[:40]!r}: {err}") from None


def check_arguments(raw: str, key: str) -> None:
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
