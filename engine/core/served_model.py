"""What an API server needs to know about the model without holding it: names, lengths, the
vocabulary size, stop ids and the tokenizer. The core sends it once, as soon as the model is loaded."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.llm_engine import LLMEngine


@dataclasses.dataclass(frozen=True)
class ServedModel:
    name: str
    max_model_len: int
    vocab_size: int
    eos_token_ids: frozenset[int]
    tokenizer: Any  # engine.tokenizer.Tokenizer, or None: token-id prompts only

    @classmethod
    def of(cls, engine: LLMEngine) -> ServedModel:
        return cls(engine.model_name, engine.max_model_len, engine.model_config.vocab_size,
                   frozenset(engine.eos_token_ids), engine.tokenizer)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False) if self.tokenizer is not None else ""
