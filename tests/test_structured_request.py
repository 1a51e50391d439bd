"""Request fields -> one output constraint: every spelling clients use, and every refusal named."""

from __future__ import annotations

from typing import Any

import pytest

from engine.structured_output import StructuredOutputError, StructuredOutputSpec
from server.structured_request import requested_constraint

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}}


@pytest.mark.parametrize("fields,expected", [
    ({}, None),
    ({"response_format": {"type": "text"}}, None),
    ({"response_format": {"type": "json_object"}}, StructuredOutputSpec.json_object()),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "A", "schema": SCHEMA, "strict": True}}},
     StructuredOutputSpec.json_schema(SCHEMA)),
    ({"structured_outputs": {"json": SCHEMA}}, StructuredOutputSpec.json_schema(SCHEMA)),
    ({"structured_outputs": {"regex": r"\d+"}}, StructuredOutputSpec.regex(r"\d+")),
    ({"structured_outputs": {"choice": ["y", "n"]}}, StructuredOutputSpec.choice(["y", "n"])),
    ({"structured_outputs": {"grammar": "start: \"x\""}}, StructuredOutputSpec.grammar("start: \"x\"")),
    ({"structured_outputs": {"json_object": True}}, StructuredOutputSpec.json_object()),
    ({"guided_json": '{"type": "object"}'}, StructuredOutputSpec.json_schema({"type": "object"})),
    ({"guided_regex": "a|b"}, StructuredOutputSpec.regex("a|b")),
    ({"guided_choice": ["x"], "guided_decoding_backend": "xgrammar"}, StructuredOutputSpec.choice(["x"])),
    ({"guided_grammar": "root ::= \"x\""}, StructuredOutputSpec.grammar("root ::= \"x\"")),
    ({"response_format": {"type": "text"}, "guided_regex": "a"}, StructuredOutputSpec.regex("a")),
])
def test_every_spelling(fields: dict[str, Any], expected: StructuredOutputSpec | None) -> None:
    assert requested_constraint(fields) == expected


def test_forced_tool_call() -> None:
    forced = StructuredOutputSpec.json_schema(SCHEMA)
    assert requested_constraint({}, forced) is forced
    with pytest.raises(StructuredOutputError) as err:
        requested_constraint({"response_format": {"type": "json_object"}}, forced)
    assert err.value.param == "tool_choice"


@pytest.mark.parametrize("fields,param", [
    ({"response_format": "json"}, "response_format"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA}}},
     "response_format.json_schema.name"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a b", "schema": SCHEMA}}},
     "response_format.json_schema.name"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "A"}}}, "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "A", "schema": [1]}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "A", "schema": SCHEMA, "strict": "yes"}}},
     "response_format.json_schema.strict"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
    ({"structured_outputs": {}}, "structured_outputs"),
    ({"structured_outputs": {"structural_tag": "x"}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "a", "disable_any_whitespace": True}}, "structured_outputs"),
    ({"structured_outputs": {"regex": 5}}, "structured_outputs.regex"),
    ({"structured_outputs": {"json_object": "yes"}}, "structured_outputs.json_object"),
    ({"guided_choice": []}, "guided_choice"),
    ({"guided_json": "{bad"}, "guided_json"),
    ({"guided_regex": "a", "guided_choice": ["a"]}, "guided_choice"),
    ({"response_format": {"type": "json_object"}, "guided_json": SCHEMA}, "guided_json"),
    ({"guided_whitespace_pattern": " *"}, "guided_whitespace_pattern"),
])
def test_refusals_name_the_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(StructuredOutputError) as err:
        requested_constraint(fields)
    assert err.value.param == param, str(err.value)
