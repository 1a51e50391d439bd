"""A 9-token vocabulary (a, b, c, ab, ba, abc, cc, bca, <eos>) for grammar tests that need to
enumerate every token: a greedy longest-match tokenizer wrapped for llguidance."""

from __future__ import annotations

import llguidance

from engine.structured_output import GrammarCompiler

TOKENS = [b"a", b"b", b"c", b"ab", b"ba", b"abc", b"cc", b"bca", b"<eos>"]
EOS = len(TOKENS) - 1
ALPHABET = "abc"


class _TinyTokenizer:
    """Greedy longest-match tokenizer over TOKENS; enough for llguidance's TokenizerWrapper."""

    eos_token_id = EOS
    bos_token_id = None
    tokens = TOKENS
    special_token_ids = [EOS]

    def __call__(self, text: bytes | str) -> list[int]:
        data = text.encode() if isinstance(text, str) else text
        ids, i = [], 0
        while i < len(data):
            best = max((t for t in range(EOS) if data.startswith(TOKENS[t], i)), key=lambda t: len(TOKENS[t]))
            ids.append(best)
            i += len(TOKENS[best])
        return ids


def tiny_grammar_compiler() -> GrammarCompiler:
    return GrammarCompiler(llguidance.LLTokenizer(llguidance.TokenizerWrapper(_TinyTokenizer())))
