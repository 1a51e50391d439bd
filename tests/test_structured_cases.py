"""The validity benchmark's schemas: whatever path a sampler takes through a schema's masks, the
output is a JSON document that validates against that schema (checked with jsonschema)."""

from __future__ import annotations

import json
import random
from typing import Any

import jsonschema
import pytest

from benchmarks.structured_cases import SCHEMAS, cases
from engine.structured_output import GrammarCompiler, StructuredOutputError, StructuredOutputSpec


@pytest.fixture(scope="module")
def compiler(smollm_tokenizer: Any) -> GrammarCompiler:
    return GrammarCompiler.from_tokenizer(smollm_tokenizer)


def _random_document(compiler: GrammarCompiler, tokenizer: Any, schema: dict[str, Any], rng: random.Random) -> str:
    """A random walk over the allowed tokens, leaning to closing tokens so it ends soon."""
    eos = min(tokenizer.eos_token_ids)
    closers = {ids[0] for s in ('"', "}", "]", '"}', "}]", '",', ",") if len(ids := tokenizer.encode(s, False)) == 1}
    matcher = compiler.matcher(StructuredOutputSpec.json_schema(schema))
    out: list[int] = []
    for _ in range(600):
        allowed = matcher.allowed_token_ids().tolist()
        if eos in allowed and (len(allowed) == 1 or rng.random() < 0.5):
            return tokenizer.decode(out)
        closing = [t for t in allowed if t in closers]
        token = rng.choice(closing) if closing and rng.random() < 0.6 else rng.choice([t for t in allowed if t != eos])
        assert matcher.accept_token(token)
        out.append(token)
    raise AssertionError(f"no end after 600 tokens: {tokenizer.decode(out)[:200]}")


def test_fifty_cases() -> None:
    pairs = cases()
    assert len(pairs) == 50 and len({p for p, _ in pairs}) == 50
    for _, schema in pairs:
        jsonschema.validators.validator_for(schema).check_schema(schema)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_any_path_through_the_masks_validates(compiler: GrammarCompiler, smollm_tokenizer: Any, name: str) -> None:
    rng = random.Random(name)
    for _ in range(2):
        text = _random_document(compiler, smollm_tokenizer, SCHEMAS[name], rng)
        jsonschema.validate(json.loads(text), SCHEMAS[name])


def test_unimplemented_keyword_is_named(compiler: GrammarCompiler) -> None:
    schema = {"type": "array", "items": {"type": "string"}, "uniqueItems": True}
    with pytest.raises(StructuredOutputError, match="uniqueItems"):
        compiler.compile(StructuredOutputSpec.json_schema(schema))
