"""Everything one jitted step reads, as one pytree: ``StepInput``.

Why one type: the step's inputs used to be a positional tuple restated in the runner's
padding inputs, its jit signature and the multi-host channel. Now adding an input (a grammar
mask, LoRA ids, draft tokens) is one field here. Data fields are arrays (leaves, the same
layout on every process); meta fields are static and part of the pytree's structure, so jit
compiles one program per (leaf shapes, meta) and nothing else keys the cache.

Layout: token rows ``[dp * T]`` and sequence rows ``[dp * S]``, replica ``r`` owning the
``r``-th equal slice of each (engine/data_parallel.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from engine.sampler import SamplerMode, SamplingTensors
from ops.attention_metadata import AttentionMetadata

_SETTING_COLUMNS = (
    ("temperature", np.float32), ("top_p", np.float32), ("top_k", np.int32), ("min_p", np.float32),
    ("presence_penalty", np.float32), ("frequency_penalty", np.float32), ("repetition_penalty", np.float32),
    ("seeds", np.uint32), ("counters", np.int32),
)
SAMPLING_PADDING = (0.0, 1.0, 0, 0.0, 0.0, 0.0, 1.0, 0, 0)  # one padded row's settings, in column order
PENDING_TOKEN = -2  # a history entry whose id is the previous step's sampled token, still on device


@dataclasses.dataclass(frozen=True)
class StepInput:
    input_ids: Any  # [T] i32
    positions: Any  # [T] i32
    slot_mapping: Any  # [T] i32 flat cache slot, -1: write nothing
    block_tables: Any  # [S, W] i32
    seq_lens: Any  # [S] i32 context length after this step
    query_start_loc: Any  # [S + 1] per replica, i32
    logits_indices: Any  # [S] i32 the token row each sequence samples from (replica-local)
    sampling: SamplingTensors  # [S] per-row sampler settings
    prompt_targets: Any  # [T] i32 next prompt token of each row (prompt logprobs)
    prev_token_index: Any  # [T] i32 row of the previous step's sampled tokens to feed here, -1: input_ids
    sample_prev_index: Any  # [S] i32 row of the previous step's tokens holding this sequence's pending token
    token_bitmask: Any  # [S, words] i32 packed allowed tokens per row (structured outputs; -1 words: any); [S, 0]: none
    max_query_len: int = 1  # static bound on any sequence's new tokens
    mode: SamplerMode = SamplerMode(True, False, 0)
    prompt_k: int | None = None  # top-k width of prompt logprobs; None: not computed

    def attention(self) -> AttentionMetadata:
        return AttentionMetadata(slot_mapping=self.slot_mapping, block_tables=self.block_tables,
                                 seq_lens=self.seq_lens, query_start_loc=self.query_start_loc,
                                 max_query_len=self.max_query_len)

    def meta(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in META_FIELDS}

    def replace(self, **changes: Any) -> StepInput:
        return dataclasses.replace(self, **changes)


META_FIELDS = ("max_query_len", "mode", "prompt_k")
DATA_FIELDS = tuple(f.name for f in dataclasses.fields(StepInput) if f.name not in META_FIELDS)
jax.tree_util.register_dataclass(StepInput, data_fields=list(DATA_FIELDS), meta_fields=list(META_FIELDS))


def empty_sampling(rows: int, bias_width: int = 0, history_width: int = 0) -> SamplingTensors:
    """Sampler settings of ``rows`` padding rows (greedy, no bias, no history)."""
    columns = {name: np.full(rows, value, dtype)
               for (name, dtype), value in zip(_SETTING_COLUMNS, SAMPLING_PADDING, strict=True)}
    return SamplingTensors(
        **columns, bias_ids=np.full((rows, bias_width), -1, np.int32),
        bias_values=np.zeros((rows, bias_width), np.float32),
        history=np.full((rows, history_width), -1, np.int32), history_is_output=np.zeros((rows, history_width), bool),
    )


def padding_input(dp: int, tokens: int, seqs: int, width: int) -> StepInput:
    """A step that computes nothing: ``tokens`` token rows and ``seqs`` sequence rows per replica."""
    all_tokens, all_seqs = dp * tokens, dp * seqs
    return StepInput(
        input_ids=np.zeros(all_tokens, np.int32), positions=np.zeros(all_tokens, np.int32),
        slot_mapping=np.full(all_tokens, -1, np.int32), block_tables=np.zeros((all_seqs, width), np.int32),
        seq_lens=np.zeros(all_seqs, np.int32), query_start_loc=np.zeros(dp * (seqs + 1), np.int32),
        logits_indices=np.zeros(all_seqs, np.int32), sampling=empty_sampling(all_seqs),
        prompt_targets=np.zeros(all_tokens, np.int32), prev_token_index=np.full(all_tokens, -1, np.int32),
        sample_prev_index=np.full(all_seqs, -1, np.int32), token_bitmask=np.zeros((all_seqs, 0), np.int32),
        max_query_len=tokens,
    )
