"""What a request asks its output to match: one constraint of one kind, checked before any compile.

A ``StructuredOutputSpec`` is the engine-side form of OpenAI's ``response_format``, vLLM's
``structured_outputs`` and the legacy ``guided_*`` fields. It is hashable (the JSON schema is kept
as canonical JSON text), so compiled grammars can be cached per spec. Everything a client sends
is bounded here: sizes, types, emptiness. Whether the grammar library accepts the constraint is
decided when it is compiled (``GrammarCompiler``), which raises the same typed error.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, Literal

from engine.request_errors import RequestValidationError
from engine.request_limits import MAX_CHOICE_CHARS, MAX_CHOICES, MAX_SPEC_CHARS

__all__ = ["MAX_CHOICES", "MAX_CHOICE_CHARS", "MAX_SPEC_CHARS", "StructuredOutputError", "StructuredOutputSpec"]

Kind = Literal["json_schema", "json_object", "regex", "choice", "grammar"]
KINDS: tuple[str, ...] = ("json_schema", "json_object", "regex", "choice", "grammar")

# vLLM's StructuredOutputsParams keys -> our kinds; its tuning options that change the meaning
# (whitespace, fallback) are refused rather than ignored.
OPTION_KINDS = {"json": "json_schema", "regex": "regex", "choice": "choice", "grammar": "grammar",
                "json_object": "json_object"}
REFUSED_OPTIONS = ("disable_any_whitespace", "disable_fallback", "disable_additional_properties", "whitespace_pattern",
                   "structural_tag")


class StructuredOutputError(RequestValidationError):
    """A constraint that cannot be used; the message names the problem (answered with a 400).

    ``param`` is the request field at fault when known (e.g. "response_format").
    """


@dataclasses.dataclass(frozen=True)
class StructuredOutputSpec:
    """One constraint. ``text`` is the kind's source: compact JSON for json_schema and choice
    (a JSON list of strings), the pattern for regex, the Lark/GBNF text for grammar, "" for
    json_object."""

    kind: Kind
    text: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise StructuredOutputError(f"structured output kind must be one of {', '.join(KINDS)}, "
                                        f"got {self.kind!r}")
        if not isinstance(self.text, str):
            raise StructuredOutputError(f"{self.kind} must be given as text, got {type(self.text).__name__}")
        if len(self.text) > MAX_SPEC_CHARS:
            raise StructuredOutputError(f"{self.kind} is {len(self.text)} characters; "
                                        f"the limit is {MAX_SPEC_CHARS}")
        if self.kind != "json_object" and not self.text.strip():
            raise StructuredOutputError(f"{self.kind} must not be empty")

    def __repr__(self) -> str:  # request logs show what kind, not a 256 KiB schema
        shown = self.text if len(self.text) <= 80 else self.text[:77] + "..."
        return f"StructuredOutputSpec(kind={self.kind!r}, text={shown!r})"

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | str) -> StructuredOutputSpec:
        """A JSON schema, as a dict or as JSON text; kept as compact JSON (key order kept: it is the
        order properties are generated in) so equal schemas share a cache entry."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as err:
                raise StructuredOutputError(f"json_schema is not valid JSON: {err}") from None
        if not isinstance(schema, (dict, bool)):
            raise StructuredOutputError(
                f"json_schema must be a JSON object (or boolean), got {type(schema).__name__}")
        return cls("json_schema", json.dumps(schema, separators=(",", ":")))

    @classmethod
    def json_object(cls) -> StructuredOutputSpec:
        """Any JSON object (OpenAI's ``response_format: {"type": "json_object"}``)."""
        return cls("json_object", "")

    @classmethod
    def regex(cls, pattern: str) -> StructuredOutputSpec:
        return cls("regex", pattern)

    @classmethod
    def choice(cls, choices: list[str]) -> StructuredOutputSpec:
        """Exactly one of the given strings."""
        if not isinstance(choices, (list, tuple)) or not choices:
            raise StructuredOutputError("choice must be a non-empty list of strings")
        if len(choices) > MAX_CHOICES:
            raise StructuredOutputError(f"choice has {len(choices)} entries; the limit is {MAX_CHOICES}")
        for i, choice in enumerate(choices):
            if not isinstance(choice, str) or not choice:
                raise StructuredOutputError(f"choice[{i}] must be a non-empty string, got {choice!r}")
            if len(choice) > MAX_CHOICE_CHARS:
                raise StructuredOutputError(f"choice[{i}] is longer than {MAX_CHOICE_CHARS} characters")
        return cls("choice", json.dumps(list(dict.fromkeys(choices)), ensure_ascii=False))

    @classmethod
    def grammar(cls, text: str) -> StructuredOutputSpec:
        """A context-free grammar in Lark syntax (llguidance's dialect) or GBNF/EBNF (llama.cpp's)."""
        return cls("grammar", text)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> StructuredOutputSpec:
        """From vLLM's ``structured_outputs`` form: exactly one of ``json`` (schema), ``regex``,
        ``choice``, ``grammar``, ``json_object: true``."""
        where = "structured_outputs"
        if not isinstance(options, Mapping):
            raise StructuredOutputError(f"{where} must be an object", where)
        unknown = sorted(set(options) - set(OPTION_KINDS))
        if unknown:
            refused = [k for k in unknown if k in REFUSED_OPTIONS]
            raise StructuredOutputError(f"{where} key(s) not supported: {', '.join(refused or unknown)}", where)
        given = [key for key in OPTION_KINDS if options.get(key) not in (None, False)]
        if len(given) != 1:
            raise StructuredOutputError(f"{where} needs exactly one of {', '.join(OPTION_KINDS)}, got {len(given)}",
                                        where)
        key = given[0]
        try:
            return cls.from_kind(OPTION_KINDS[key], options[key])
        except StructuredOutputError as err:
            raise StructuredOutputError(f"{where} option {key!r}: {err}", f"{where}.{key}") from None

    @classmethod
    def from_kind(cls, kind: str, value: Any) -> StructuredOutputSpec:
        """One constraint from its kind and its JSON value (schema object/text, pattern, list, grammar)."""
        if kind == "json_schema":
            return cls.json_schema(value)
        if kind == "json_object":
            if value is not True:
                raise StructuredOutputError("json_object must be true")
            return cls.json_object()
        if kind == "choice":
            return cls.choice(value)
        if kind not in ("regex", "grammar"):
            raise StructuredOutputError(f"structured output kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if not isinstance(value, str):
            raise StructuredOutputError(f"{kind} must be a string, got {type(value).__name__}")
        return cls(kind, value)  # type: ignore[arg-type]

    @property
    def choices(self) -> list[str]:
        """The choice list of a ``choice`` spec."""
        if self.kind != "choice":
            raise AttributeError("only a choice spec has choices")
        return json.loads(self.text)
