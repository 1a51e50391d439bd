"""Host side of a step: a scheduled batch becomes one padded ``StepInput``.

The padded shapes come from one place (``ModelRunner.shapes``, the bucket choice); this
module only fills rows. Positions whose KV is already cached (a reused prefix, a forked
prompt) are never rewritten: another sequence may be reading that block.

A sequence whose newest token was sampled by the step still running on the device (the
overlap, docs/architecture.md) has that token fed by index (``prev_token_index``), never by
value: the host does not know it yet.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

from engine.sampler import SamplerMode, SamplingTensors, pow2_at_least
from engine.scheduler import ScheduledBatch
from engine.sequence import Sequence
from engine.step_input import (
    PENDING_TOKEN, SAMPLING_PADDING, StepInput, empty_sampling, sampling_from_rows,
)
from sharding.data_parallel import DataParallelBatch

ShapeFn = Callable[[int, int, int, bool], tuple[int, int, int]]


@dataclasses.dataclass
class BuiltStep:
    inputs: StepInput
    rows: np.ndarray  # [B] each scheduled sequence's row in the padded, replica-sliced layout
    token_rows: np.ndarray  # [B] its row in the step's fixed-size sampled-token buffer
    samples: np.ndarray  # [B] bool: this step ends the sequence's known tokens, so it samples
    prompt_rows: dict[int, tuple[int, int, int]]  # batch index -> (token row, first position, count)


def logprob_width(requested: int) -> int:
    return 1 if requested <= 1 else (5 if requested <= 5 else 20)


def build_step_input(batch: ScheduledBatch, shapes: ShapeFn, block_size: int, dp: int, token_buffer_rows: int,
                     eos_ids: frozenset[int]) -> BuiltStep:
    seqs, counts = batch.seqs, batch.num_new_tokens
    ranks = batch.dp_ranks if isinstance(batch, DataParallelBatch) else [0] * len(seqs)
    decode_only = all(n == 1 for n in counts)
    widest = max(-(-(s.num_computed_tokens + n) // block_size) for s, n in zip(seqs, counts))
    tokens_of, seqs_of = [0] * dp, [0] * dp
    for rank, n in zip(ranks, counts):
        tokens_of[rank] += n
        seqs_of[rank] += 1
    t_pad, s_pad, width = shapes(max(tokens_of), max(seqs_of), widest, decode_only)
    bs = block_size
    inp = dict(
        input_ids=np.zeros(dp * t_pad, np.int32), positions=np.zeros(dp * t_pad, np.int32),
        slot_mapping=np.full(dp * t_pad, -1, np.int32), prompt_targets=np.zeros(dp * t_pad, np.int32),
        prev_token_index=np.full(dp * t_pad, -1, np.int32), block_tables=np.zeros((dp * s_pad, width), np.int32),
        seq_lens=np.zeros(dp * s_pad, np.int32), query_start_loc=np.zeros(dp * (s_pad + 1), np.int32),
        logits_indices=np.zeros(dp * s_pad, np.int32), sample_prev_index=np.full(dp * s_pad, -1, np.int32),
    )
    samples = np.zeros(len(seqs), bool)
    rows = np.zeros(len(seqs), np.int64)
    token_rows = np.zeros(len(seqs), np.int64)
    placed: list[tuple[Sequence | None, bool]] = [(None, False)] * (dp * s_pad)
    prompt_rows: dict[int, tuple[int, int, int]] = {}
    prompt_k = -1
    filled = [0] * dp
    local = [0] * dp  # next token offset within each replica's slice
    for i, (seq, n, rank) in enumerate(zip(seqs, counts, ranks)):
        start = seq.num_computed_tokens
        end = start + n
        j, cursor = filled[rank], rank * t_pad + local[rank]
        rows[i] = row = rank * s_pad + j
        token_rows[i] = rank * token_buffer_rows + j
        _place_tokens(inp, seq, cursor, start, end, bs)
        table = seq.block_table
        inp["block_tables"][row, : len(table)] = table
        inp["seq_lens"][row] = end
        inp["query_start_loc"][rank * (s_pad + 1) + j + 1] = local[rank] + n
        inp["logits_indices"][row] = local[rank] + n - 1
        samples[i] = end == seq.num_tokens
        placed[row] = (seq, bool(samples[i]))
        if samples[i] and seq.pending_row >= 0:
            inp["sample_prev_index"][row] = seq.pending_row
        if seq.wants_prompt_logprobs() and start < seq.num_prompt_tokens:
            last = min(end, seq.num_prompt_tokens - 1)
            targets = seq.token_ids[start + 1 : last + 1]
            inp["prompt_targets"][cursor : cursor + len(targets)] = targets
            prompt_rows[i] = (cursor, start, len(targets))
            prompt_k = max(prompt_k, seq.params.prompt_logprobs or 0)
        filled[rank] += 1
        local[rank] += n
    for rank in range(dp):
        inp["query_start_loc"][rank * (s_pad + 1) + filled[rank] + 1 : (rank + 1) * (s_pad + 1)] = local[rank]
    sampling_seqs = [s for s, take in zip(seqs, samples) if take]
    bias_width, history_width = _side_widths(seqs, samples, eos_ids)
    inputs = StepInput(
        **inp, sampling=_sampling_arrays(placed, dp * s_pad, bias_width, history_width, eos_ids),
        max_query_len=1 if decode_only else min(t_pad, pow2_at_least(max(counts), 16)),
        mode=_sampler_mode(sampling_seqs),
        prompt_k=logprob_width(prompt_k) if prompt_k >= 0 else None,
    )
    return BuiltStep(inputs, rows, token_rows, samples, prompt_rows)


def _place_tokens(inp: dict[str, np.ndarray], seq: Sequence, cursor: int, start: int, end: int, bs: int) -> None:
    """Fills token rows ``cursor..`` with positions ``start..end`` of ``seq``."""
    table = seq.block_table
    known = len(seq.token_ids)  # a position at ``known`` is the pending token (on device)
    if end - start == 1:  # decode: plain ints are several times cheaper than numpy on one element
        if start < known:
            inp["input_ids"][cursor] = seq.token_ids[start]
        else:
            inp["prev_token_index"][cursor] = seq.pending_row
        inp["positions"][cursor] = start
        if start >= seq.kv_present_tokens:
            inp["slot_mapping"][cursor] = table[start // bs] * bs + start % bs
        return
    n = end - start
    pos = np.arange(start, end, dtype=np.int32)
    if end > known:
        raise RuntimeError(f"a {n}-token chunk reaches past the sequence's {known} known tokens")
    inp["input_ids"][cursor : cursor + n] = seq.token_ids[start:end]
    inp["positions"][cursor : cursor + n] = pos
    slot = np.asarray(table, np.int32)[pos // bs] * bs + pos % bs
    inp["slot_mapping"][cursor : cursor + n] = np.where(pos < seq.kv_present_tokens, -1, slot)


def _sampler_mode(sampling_seqs: list[Sequence]) -> SamplerMode:
    wanted = [s.params.logprobs for s in sampling_seqs if s.params.logprobs is not None]
    return SamplerMode(
        all_greedy=all(s.params.greedy for s in sampling_seqs),
        use_filters=any(s.params.uses_filters for s in sampling_seqs),
        num_logprobs=logprob_width(max(wanted)) if wanted else 0,
    )


def _side_widths(seqs: list[Sequence], samples: np.ndarray, eos_ids: frozenset[int]) -> tuple[int, int]:
    bias, history = 0, 0
    for seq, take in zip(seqs, samples):
        if not take:
            continue
        p = seq.params
        n = len(p.logit_bias or {})
        if seq.num_output_tokens < p.min_tokens:
            n += len(eos_ids) + len(p.stop_token_ids)
        bias = max(bias, n)
        if p.uses_penalties:
            history = max(history, seq.num_tokens)
    return (pow2_at_least(bias) if bias else 0), (pow2_at_least(history, 16) if history else 0)


def _sampling_arrays(rows: list[tuple[Sequence | None, bool]], s_pad: int, bias_width: int, history_width: int,
                     eos_ids: frozenset[int] = frozenset()) -> SamplingTensors:
    """One row of per-request settings per padded sequence row, converted to arrays in one go.

    Counters and min_tokens count a pending token (sampled, still on device) as generated, so
    seeded sampling draws the same numbers with the overlap on or off; its id in the penalty
    history is filled in on the device (``PENDING_TOKEN``).
    """
    if not any(take for _, take in rows):
        return empty_sampling(s_pad, bias_width, history_width)
    settings = [SAMPLING_PADDING] * s_pad
    bias_ids = np.full((s_pad, bias_width), -1, np.int32)
    bias_values = np.zeros((s_pad, bias_width), np.float32)
    history = np.full((s_pad, history_width), -1, np.int32)
    is_output = np.zeros((s_pad, history_width), bool)
    for i, (seq, take) in enumerate(rows):
        if not take or seq is None:
            continue
        p = seq.params
        generated = seq.num_output_tokens
        settings[i] = (p.temperature, p.top_p, p.top_k, p.min_p, p.presence_penalty, p.frequency_penalty,
                       p.repetition_penalty, seq.seed & 0xFFFFFFFF, generated)
        if p.logit_bias or generated < p.min_tokens:
            entries = list((p.logit_bias or {}).items())
            if generated < p.min_tokens:
                entries += [(tok, -math.inf) for tok in (*eos_ids, *p.stop_token_ids)]
            for j, (tok, value) in enumerate(entries):
                bias_ids[i, j], bias_values[i, j] = tok, value
        if p.uses_penalties and history_width:
            known = len(seq.token_ids)
            history[i, :known] = seq.token_ids
            history[i, known : seq.num_tokens] = PENDING_TOKEN
            is_output[i, seq.num_prompt_tokens : seq.num_tokens] = True
    return sampling_from_rows(settings, bias_ids, bias_values, history, is_output)

