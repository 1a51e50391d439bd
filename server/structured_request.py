"""Which output constraint an OpenAI-style request asks for, from whichever field it used.

Clients say it in one of several ways: OpenAI's ``response_format`` (text, json_object,
json_schema), vLLM's ``structured_outputs`` object, the legacy ``guided_json`` /
``guided_regex`` / ``guided_choice`` / ``guided_grammar`` fields, or a forced tool call
(``tool_choice: "required"`` or a named function). ``requested_constraint`` turns them into one
``StructuredOutputSpec`` (or None), and refuses, with a ``StructuredOutputError`` naming the
field, anything it cannot honour: two constraints at once, an unknown option, a malformed value.
Silently ignoring a constraint would hand the client free text it did not ask for.

Inputs are plain JSON values (dicts, lists, strings), as decoded from the body.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from engine.structured_output import StructuredOutputError, StructuredOutputSpec

GUIDED_FIELDS = ("guided_json", "guided_regex", "guided_choice", "guided_grammar")
# Fields that only pick a backend or tune it within what the constraint already means.
IGNORED_FIELDS = ("guided_decoding_backend",)
UNSUPPORTED_FIELDS = ("guided_whitespace_pattern",)
_SCHEMA_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def requested_constraint(fields: Mapping[str, Any],
                         forced_tool_call: StructuredOutputSpec | None = None) -> StructuredOutputSpec | None:
    """The one constraint the request's ``fields`` ask for; ``forced_tool_call`` is the spec a
    ``tool_choice`` demands (from ``server.tool_parsers.forced_calls``), if any."""
    return constraint_and_source(fields, forced_tool_call)[1]


def constraint_and_source(fields: Mapping[str, Any], forced_tool_call: StructuredOutputSpec | None = None
                          ) -> tuple[str | None, StructuredOutputSpec | None]:
    """``requested_constraint`` and the request field it came from (to name in a later error)."""
    for name in UNSUPPORTED_FIELDS:
        if fields.get(name) is not None:
            raise StructuredOutputError(f"{name} is not supported", name)
    found: list[tuple[str, StructuredOutputSpec]] = []
    if fields.get("response_format") is not None:
        spec = _from_response_format(fields["response_format"])
        if spec is not None:
            found.append(("response_format", spec))
    if fields.get("structured_outputs") is not None:
        found.append(("structured_outputs", StructuredOutputSpec.from_options(fields["structured_outputs"])))
    for name in GUIDED_FIELDS:
        if fields.get(name) is not None:
            found.append((name, _with_param(name, lambda n=name: _from_guided(n, fields[n]))))
    if forced_tool_call is not None:
        found.append(("tool_choice", forced_tool_call))
    if len(found) > 1:
        names = ", ".join(name for name, _ in found)
        raise StructuredOutputError(f"only one output constraint may be given, got {names}", found[1][0])
    return found[0] if found else (None, None)


def _with_param(param: str, make: Any) -> StructuredOutputSpec:
    try:
        return make()
    except StructuredOutputError as err:
        raise StructuredOutputError(f"{param}: {err}", err.param or param) from None


def _from_response_format(value: Any) -> StructuredOutputSpec | None:
    if not isinstance(value, Mapping):
        raise StructuredOutputError("response_format must be an object", "response_format")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return StructuredOutputSpec.json_object()
    if kind != "json_schema":
        raise StructuredOutputError(
            f"response_format type must be 'text', 'json_object' or 'json_schema', got {kind!r}", "response_format")
    body = value.get("json_schema")
    param = "response_format.json_schema"
    if not isinstance(body, Mapping):
        raise StructuredOutputError(f"{param} must be an object with 'name' and 'schema'", param)
    name = body.get("name")
    if not isinstance(name, str) or not _SCHEMA_NAME.fullmatch(name):
        raise StructuredOutputError(f"{param}.name must be 1-64 characters of a-z, A-Z, 0-9, '_' or '-'",
                                    f"{param}.name")
    if body.get("strict") is not None and not isinstance(body["strict"], bool):
        raise StructuredOutputError(f"{param}.strict must be a boolean", f"{param}.strict")
    if "schema" not in body:
        raise StructuredOutputError(f"{param}.schema is required", f"{param}.schema")
    return _with_param(f"{param}.schema", lambda: StructuredOutputSpec.json_schema(body["schema"]))


def _from_guided(name: str, value: Any) -> StructuredOutputSpec:
    kind = {"guided_json": "json_schema", "guided_regex": "regex", "guided_choice": "choice",
            "guided_grammar": "grammar"}[name]
    return StructuredOutputSpec.from_kind(kind, value)
