"""The engine's grammar bookkeeping on the real tokenizer: background index, masks per step rows,
verdicts per sampled token (continue, complete, failed)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from engine.structured_output import StructuredOutputSpec, unpack_bitmask
from engine.structured_output.engine_grammars import EngineGrammars, GrammarVerdict


def _wait(*grammars: Any) -> None:
    deadline = time.monotonic() + 60
    while not all(g.is_ready for g in grammars):
        assert time.monotonic() < deadline, "grammar compile did not finish"
        time.sleep(0.01)


def test_masks_and_verdicts(smollm_tokenizer: Any) -> None:
    vocab = smollm_tokenizer.vocab_size + 64  # a model vocabulary padded past the tokenizer's
    grammars = EngineGrammars(smollm_tokenizer, vocab)
    choice = grammars.grammar(StructuredOutputSpec.choice(["yes", "no"]))
    broken = grammars.grammar(StructuredOutputSpec.regex("(?=x)"))
    _wait(choice, broken)
    assert grammars.bitmask([None, None], 4) is None
    mask = grammars.bitmask([None, choice, broken], 4)
    assert mask is not None and mask.shape == (4, (vocab + 31) // 32)
    allowed = unpack_bitmask(mask, vocab)
    assert allowed[[0, 2, 3]].all()  # unconstrained, failed and padding rows allow everything
    first = set(np.flatnonzero(allowed[1]).tolist())
    assert first and not allowed[1, smollm_tokenizer.vocab_size:].any()
    yes = smollm_tokenizer.encode("yes", add_special_tokens=False)
    assert set(yes[:1]) <= first
    verdicts = [EngineGrammars.advance(choice, t) for t in yes]
    assert verdicts[-1] is GrammarVerdict.COMPLETE and all(v is GrammarVerdict.CONTINUE for v in verdicts[:-1])
    assert EngineGrammars.advance(broken, yes[0]) is GrammarVerdict.FAILED and "look" in (broken.failure or "")
    refused = grammars.grammar(StructuredOutputSpec.regex("[0-9]+"))
    _wait(refused)
    assert EngineGrammars.advance(refused, yes[0]) is GrammarVerdict.FAILED
