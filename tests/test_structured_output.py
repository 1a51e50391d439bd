"""Structured-output constraints on the real SmolLM2 tokenizer: specs, compile errors, the cache,
JSON behaviour (schemas, whitespace bounds), matcher state (termination, rollback, bad tokens)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pydantic
import pytest
from openai.lib._pydantic import to_strict_json_schema

from engine.structured_output import GrammarCompiler, GrammarMatcher, StructuredOutputError, StructuredOutputSpec
from engine.structured_output.spec import MAX_CHOICES, MAX_SPEC_CHARS


@pytest.fixture(scope="module")
def compiler(smollm_tokenizer: Any) -> GrammarCompiler:
    return GrammarCompiler.from_tokenizer(smollm_tokenizer, cache_size=4)


def _feed(matcher: GrammarMatcher, tokenizer: Any, text: str) -> bool:
    return matcher.accept_tokens(tokenizer.encode(text, add_special_tokens=False))


def _greedy_text(matcher: GrammarMatcher, tokenizer: Any, preference: list[str], limit: int = 200) -> str:
    """Drives a matcher like a model would: take the first preferred token that is allowed."""
    vocab = tokenizer.hf.get_vocab()
    ranked = [vocab[t] for t in preference if t in vocab]
    eos = min(tokenizer.eos_token_ids)
    out: list[int] = []
    for _ in range(limit):
        allowed = set(matcher.allowed_token_ids().tolist())
        token = next((t for t in ranked if t in allowed), min(allowed))
        if token == eos:
            break
        assert matcher.accept_token(token)
        out.append(token)
    return tokenizer.decode(out)


def test_spec_bounds_and_canonical_form() -> None:
    a = StructuredOutputSpec.json_schema({"type": "object", "properties": {"x": {"type": "string"}}})
    b = StructuredOutputSpec.json_schema('{"type": "object",\n "properties": {"x": {"type": "string"}}}')
    assert a == b and hash(a) == hash(b)
    assert StructuredOutputSpec.choice(["x", "y", "x"]).choices == ["x", "y"]
    bad = [
        lambda: StructuredOutputSpec("yaml", "x"),  # type: ignore[arg-type]
        lambda: StructuredOutputSpec.regex(""),
        lambda: StructuredOutputSpec.grammar("   "),
        lambda: StructuredOutputSpec.regex("a" * (MAX_SPEC_CHARS + 1)),
        lambda: StructuredOutputSpec.json_schema("{not json"),
        lambda: StructuredOutputSpec.json_schema("[1, 2]"),
        lambda: StructuredOutputSpec.choice([]),
        lambda: StructuredOutputSpec.choice(["ok", ""]),
        lambda: StructuredOutputSpec.choice(["ok", 3]),  # type: ignore[list-item]
        lambda: StructuredOutputSpec.choice(["c"] * (MAX_CHOICES + 1)),
        lambda: StructuredOutputSpec("regex", 5),  # type: ignore[arg-type]
    ]
    for make in bad:
        with pytest.raises(StructuredOutputError):
            make()


@pytest.mark.parametrize("spec,fragment", [
    (StructuredOutputSpec.regex(r"(?<=a)b"), "look-around"),
    (StructuredOutputSpec.regex(r"(unclosed"), "regex"),
    (StructuredOutputSpec.json_schema({"type": "object", "properties": {"a": {"type": "frobnicate"}}}),
     "frobnicate"),
    (StructuredOutputSpec.grammar("start: undefined_rule"), "undefined_rule"),
    (StructuredOutputSpec.regex("(a{1000}){1000}"), "expands to about 1000000 states"),
    (StructuredOutputSpec.json_schema({"type": "string", "pattern": "^(x{500}){500}$"}), "expands"),
    (StructuredOutputSpec.regex("[^\\x00-\\U0010FFFF]"), "admits no output"),
    (StructuredOutputSpec.json_schema({"$ref": "#"}), "admits no output"),
    (StructuredOutputSpec.json_schema({"$ref": "http://example.com/s.json"}), "example.com"),
])
def test_compile_errors_name_the_problem(compiler: GrammarCompiler, spec: StructuredOutputSpec,
                                         fragment: str) -> None:
    with pytest.raises(StructuredOutputError, match=fragment) as first:
        compiler.compile(spec)
    with pytest.raises(StructuredOutputError) as second:  # the failure is cached: same error object
        compiler.compile(spec)
    assert second.value is first.value


def test_cache_is_lru(compiler: GrammarCompiler) -> None:
    specs = [StructuredOutputSpec.regex(f"x{i}") for i in range(5)]
    first = compiler.compile(specs[0])
    assert compiler.compile(specs[0]) is first
    for spec in specs[1:]:
        compiler.compile(spec)
    assert compiler.cache_info()["entries"] == 4
    assert compiler.compile(specs[0]) is not first  # evicted, compiled again


def test_compile_async(compiler: GrammarCompiler) -> None:
    spec = StructuredOutputSpec.regex("async[0-9]")
    compiled = compiler.compile_async(spec).result(timeout=30)
    again = compiler.compile_async(spec)
    assert again.done() and again.result() is compiled  # cached: no thread involved
    failing = compiler.compile_async(StructuredOutputSpec.regex("(?=x)"))
    assert isinstance(failing.exception(timeout=30), StructuredOutputError)
    assert isinstance(compiler.compile_async(StructuredOutputSpec.regex("(?=x)")).exception(), StructuredOutputError)


def test_json_schema_forces_a_valid_document(compiler: GrammarCompiler, smollm_tokenizer: Any) -> None:
    schema = {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 8}, "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2}},
        "required": ["name", "age", "tags"], "additionalProperties": False}
    matcher = compiler.matcher(StructuredOutputSpec.json_schema(schema))
    # A "model" that would rather talk than write JSON still ends with a valid document.
    text = _greedy_text(matcher, smollm_tokenizer, ["Hello", "!", "}", "]", ",", "\"", "1"])
    document = json.loads(text)
    jsonschema.validate(document, schema)
    assert list(document) == ["name", "age", "tags"]  # in the schema's order
    assert matcher.is_terminated


def test_json_whitespace_is_bounded(compiler: GrammarCompiler, smollm_tokenizer: Any) -> None:
    spec = StructuredOutputSpec.json_schema({"type": "object", "properties": {"a": {"type": "integer"}}})
    for ok in ['{"a":1}', '{"a": 1}', '{\n  "a": 1\n}', '{\n\t"a": 1\n}']:
        assert _feed(compiler.matcher(spec), smollm_tokenizer, ok), ok
    for runaway in ['{    "a": 1}', '{\n\n\n"a": 1}', '{"a":' + " " * 30]:
        matcher = compiler.matcher(spec)
        assert not _feed(matcher, smollm_tokenizer, runaway), runaway
        assert matcher.error and matcher.is_terminated


def test_json_object_and_pydantic_schema(compiler: GrammarCompiler, smollm_tokenizer: Any) -> None:
    any_object = compiler.matcher(StructuredOutputSpec.json_object())
    assert _feed(any_object, smollm_tokenizer, '{"x": [1, {"y": null}], "z": "w"}') and any_object.is_accepting
    assert not _feed(compiler.matcher(StructuredOutputSpec.json_object()), smollm_tokenizer, '[1]')

    class Event(pydantic.BaseModel):
        name: str
        day: int
        attendees: list[str]
        location: str | None = None

    class Place(pydantic.BaseModel):
        city: str
        zip: str | None

    class Trip(pydantic.BaseModel):
        event: Event
        stops: list[Place]

    doc = Event(name="x", day=3, attendees=["a", "b"]).model_dump_json()
    matcher = compiler.matcher(StructuredOutputSpec.json_schema(Event.model_json_schema()))
    assert _feed(matcher, smollm_tokenizer, doc) and matcher.is_accepting
    # What openai's client.chat.completions.parse sends: strict, $defs and $refs, nullable fields.
    strict = to_strict_json_schema(Trip)
    trip = Trip(event=Event(name="x", day=3, attendees=[]), stops=[Place(city="Oslo", zip=None)])
    matcher = compiler.matcher(StructuredOutputSpec.json_schema(strict))
    assert _feed(matcher, smollm_tokenizer, trip.model_dump_json()) and matcher.is_accepting


def test_regex_choice_and_grammar(compiler: GrammarCompiler, smollm_tokenizer: Any) -> None:
    eos = min(smollm_tokenizer.eos_token_ids)
    date = compiler.matcher(StructuredOutputSpec.regex(r"\d{4}-\d{2}-\d{2}"))
    assert _feed(date, smollm_tokenizer, "2026-11-30") and date.is_terminated
    assert date.allowed_token_ids().tolist() == [eos]
    choice = compiler.matcher(StructuredOutputSpec.choice(["positive", "negative"]))
    assert not _feed(choice, smollm_tokenizer, "neutral")
    lark = compiler.matcher(StructuredOutputSpec.grammar('start: "(" expr ")"\nexpr: /[0-9]+/ ("+" /[0-9]+/)*'))
    assert _feed(lark, smollm_tokenizer, "(1+22+3)") and lark.is_terminated
    gbnf = compiler.matcher(StructuredOutputSpec.grammar('root ::= "yes" | "no"'))
    assert _feed(gbnf, smollm_tokenizer, "yes") and gbnf.is_accepting


def test_rollback_restores_the_mask(compiler: GrammarCompiler, smollm_tokenizer: Any) -> None:
    matcher = compiler.matcher(StructuredOutputSpec.regex(r"(abc|abd)[0-9]+"))
    assert _feed(matcher, smollm_tokenizer, "abc")
    before = matcher.allowed_token_ids()
    assert _feed(matcher, smollm_tokenizer, "12")
    matcher.rollback(smollm_tokenizer.encode("12", add_special_tokens=False).__len__())
    assert (matcher.allowed_token_ids() == before).all()
    with pytest.raises(ValueError, match="roll back"):
        matcher.rollback(matcher.num_accepted + 1)
    matcher.reset()
    assert matcher.num_accepted == 0 and _feed(matcher, smollm_tokenizer, "abd7")


def test_a_disallowed_token_puts_the_matcher_in_error(compiler: GrammarCompiler, smollm_tokenizer: Any) -> None:
    matcher = compiler.matcher(StructuredOutputSpec.regex("[0-9]+"))
    assert matcher.error is None
    assert not matcher.accept_token(smollm_tokenizer.encode("x", add_special_tokens=False)[0])
    assert matcher.error and matcher.is_terminated
    other = compiler.matcher(StructuredOutputSpec.regex("[0-9]+"))  # the template is untouched
    assert other.error is None and _feed(other, smollm_tokenizer, "42")
