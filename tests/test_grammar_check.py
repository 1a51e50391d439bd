"""The API server's early compile check: a good constraint passes, a bad one raises with its reason."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from engine.structured_output import StructuredOutputError, StructuredOutputSpec
from server.grammar_check import GrammarCheck


def test_check(smollm_tokenizer: Any) -> None:
    check = GrammarCheck(smollm_tokenizer, smollm_tokenizer.vocab_size)

    async def run() -> None:
        await check.check(StructuredOutputSpec.json_schema({"type": "object"}))
        with pytest.raises(StructuredOutputError, match="look-around"):
            await check.check(StructuredOutputSpec.regex("(?<=a)b"))
        await asyncio.gather(*(check.check(StructuredOutputSpec.choice([f"c{i}"])) for i in range(3)))

    asyncio.run(run())
