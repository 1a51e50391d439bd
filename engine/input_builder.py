"""Host side of a step: a scheduled batch becomes one padded ``StepInput``.

The padded shapes come from one place (``BucketPlan.shapes``, engine/bucket_plan.py); this
module only fills rows. Positions whose KV is already cached (a reused prefix, a forked
prompt) are never rewritten: another sequence may be reading that block.

A sequence whose newest token was sampled by the step still running on the device (the
overlap, docs/architecture.md) has that token fed by index (``prev_token_index``), never by
value: the host does not know it yet.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from engine.batch_rows import FLOAT_SETTINGS, BatchRows
from engine.data_parallel import DataParallelBatch
from engine.sampler import SamplerMode, SamplingTensors, pow2_at_least
from engine.scheduler import ScheduledBatch
from engine.sequence import Sequence
from engine.step_input import PENDING_TOKEN, StepInput, empty_sampling

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


def build_step_input(batch: ScheduledBatch, slots: np.ndarray, store: BatchRows, shapes: ShapeFn,
                     block_size: int, dp: int, token_buffer_rows: int, eos_ids: frozenset[int]) -> BuiltStep:
    """``slots``: each scheduled sequence's row in ``store`` (``BatchRows.place``)."""
    seqs, counts = batch.seqs, np.asarray(batch.num_new_tokens, np.int64)
    b = len(seqs)
    ranks = np.asarray(batch.dp_ranks if isinstance(batch, DataParallelBatch) else np.zeros(b), np.int64)
    starts = np.fromiter((s.num_computed_tokens for s in seqs), np.int64, b)
    num_tokens = np.fromiter((s.num_tokens for s in seqs), np.int64, b)
    ends = starts + counts
    decode_only = bool(counts.max() == 1)
    widest = int(-(-ends.max() // block_size))
    tokens_of = np.bincount(ranks, weights=counts, minlength=dp)
    seqs_of = np.bincount(ranks, minlength=dp)
    t_pad, s_pad, width = shapes(int(tokens_of.max()), int(seqs_of.max()), widest, decode_only)
    index_in_replica, local_start = _replica_offsets(ranks, counts, dp)
    rows = ranks * s_pad + index_in_replica
    cursors = ranks * t_pad + local_start
    samples = ends == num_tokens
    # the device reads a replica's own slice of the sampled-token buffer: replica-local rows
    pending_rows = np.fromiter((s.pending_row for s in seqs), np.int64, b)
    pending_rows = np.where(pending_rows >= 0, pending_rows % token_buffer_rows, -1)
    inp = dict(
        input_ids=np.zeros(dp * t_pad, np.int32), positions=np.zeros(dp * t_pad, np.int32),
        slot_mapping=np.full(dp * t_pad, -1, np.int32), prompt_targets=np.zeros(dp * t_pad, np.int32),
        prev_token_index=np.full(dp * t_pad, -1, np.int32), block_tables=np.zeros((dp * s_pad, width), np.int32),
        seq_lens=np.zeros(dp * s_pad, np.int32), query_start_loc=np.zeros(dp * (s_pad + 1), np.int32),
        logits_indices=np.zeros(dp * s_pad, np.int32), sample_prev_index=np.full(dp * s_pad, -1, np.int32),
    )
    shared = min(width, store.tables.shape[1])
    inp["block_tables"][rows, :shared] = store.tables[slots, :shared]
    inp["seq_lens"][rows] = ends
    inp["logits_indices"][rows] = local_start + counts - 1
    qsl = inp["query_start_loc"].reshape(dp, s_pad + 1)
    for rank in range(dp):  # each replica's offsets, padding rows repeating its total
        mine = ranks == rank
        qsl[rank, 1:] = tokens_of[rank]
        qsl[rank, 1 + index_in_replica[mine]] = (local_start + counts)[mine]
    decode = np.flatnonzero(counts == 1)
    _place_decode_rows(inp, [seqs[i] for i in decode], starts[decode], cursors[decode], pending_rows[decode],
                       store.tables[slots[decode]], block_size)
    for i in np.flatnonzero(counts > 1):
        _place_chunk(inp, seqs[i], int(cursors[i]), int(starts[i]), int(ends[i]), block_size)
    prompt_rows, prompt_k = _place_prompt_targets(inp, seqs, starts, ends, cursors)
    taking = np.flatnonzero(samples)
    inp["sample_prev_index"][rows[taking]] = pending_rows[taking]
    inputs = StepInput(
        **inp, sampling=_sampling_tensors(seqs, taking, rows[taking], slots[taking], store, dp * s_pad, eos_ids),
        max_query_len=1 if decode_only else min(t_pad, pow2_at_least(int(counts.max()), 16)),
        mode=_sampler_mode(store, slots[taking]),
        prompt_k=logprob_width(prompt_k) if prompt_k >= 0 else None,
        token_bitmask=np.zeros((dp * s_pad, 0), np.int32),  # the runner fills it for constrained rows
    )
    return BuiltStep(inputs, rows, ranks * token_buffer_rows + index_in_replica, samples, prompt_rows)


def _replica_offsets(ranks: np.ndarray, counts: np.ndarray, dp: int) -> tuple[np.ndarray, np.ndarray]:
    """Each sequence's index among its replica's sequences and its first token offset there."""
    if dp == 1:
        return np.arange(len(counts)), np.cumsum(counts) - counts
    index, start = np.zeros(len(counts), np.int64), np.zeros(len(counts), np.int64)
    for rank in range(dp):
        mine = np.flatnonzero(ranks == rank)
        index[mine] = np.arange(len(mine))
        start[mine] = np.cumsum(counts[mine]) - counts[mine]
    return index, start


def _place_decode_rows(inp: dict[str, np.ndarray], seqs: list[Sequence], starts: np.ndarray, cursors: np.ndarray,
                       pending_rows: np.ndarray, tables: np.ndarray, bs: int) -> None:
    """All one-token rows at once; only rows whose token is known on the host read it."""
    if not seqs:
        return
    known = np.fromiter((len(s.token_ids) for s in seqs), np.int64, len(seqs))
    present = np.fromiter((s.kv_present_tokens for s in seqs), np.int64, len(seqs))
    pending = starts >= known
    inp["positions"][cursors] = starts
    inp["prev_token_index"][cursors[pending]] = pending_rows[pending]
    from_host = np.flatnonzero(~pending)
    inp["input_ids"][cursors[from_host]] = [seqs[i].token_ids[starts[i]] for i in from_host]
    blocks = tables[np.arange(len(seqs)), starts // bs]
    inp["slot_mapping"][cursors] = np.where(starts >= present, blocks * bs + starts % bs, -1)


def _place_chunk(inp: dict[str, np.ndarray], seq: Sequence, cursor: int, start: int, end: int, bs: int) -> None:
    """A prefill chunk: positions ``start..end`` of ``seq``, all known on the host."""
    n = end - start
    if end > len(seq.token_ids):
        raise RuntimeError(f"a {n}-token chunk reaches past the sequence's {len(seq.token_ids)} known tokens")
    pos = np.arange(start, end, dtype=np.int32)
    inp["input_ids"][cursor : cursor + n] = seq.token_ids[start:end]
    inp["positions"][cursor : cursor + n] = pos
    slot = np.asarray(seq.block_table, np.int32)[pos // bs] * bs + pos % bs
    inp["slot_mapping"][cursor : cursor + n] = np.where(pos < seq.kv_present_tokens, -1, slot)


def _place_prompt_targets(inp: dict[str, np.ndarray], seqs: list[Sequence], starts: np.ndarray, ends: np.ndarray,
                          cursors: np.ndarray) -> tuple[dict[int, tuple[int, int, int]], int]:
    prompt_rows: dict[int, tuple[int, int, int]] = {}
    prompt_k = -1
    for i in [i for i, s in enumerate(seqs) if s.params.prompt_logprobs is not None]:
        seq, start, cursor = seqs[i], int(starts[i]), int(cursors[i])
        if seq.wants_prompt_logprobs() and start < seq.num_prompt_tokens:
            last = min(int(ends[i]), seq.num_prompt_tokens - 1)
            targets = seq.token_ids[start + 1 : last + 1]
            inp["prompt_targets"][cursor : cursor + len(targets)] = targets
            prompt_rows[i] = (cursor, start, len(targets))
            prompt_k = max(prompt_k, seq.params.prompt_logprobs or 0)
    return prompt_rows, prompt_k


def _sampler_mode(store: BatchRows, slots: np.ndarray) -> SamplerMode:
    wanted = store.logprobs[slots]
    return SamplerMode(
        all_greedy=bool(np.all(store.floats[slots, 0] == 0)),
        use_filters=bool(np.any(store.uses_filters[slots])),
        num_logprobs=logprob_width(int(wanted.max())) if wanted.size and wanted.max() >= 0 else 0,
    )


def _sampling_tensors(seqs: list[Sequence], taking: np.ndarray, rows: np.ndarray, slots: np.ndarray,
                      store: BatchRows, s_pad: int, eos_ids: frozenset[int]) -> SamplingTensors:
    """Settings of the sampling rows, gathered from the store; bias and history only for the
    few sequences that have them.

    Counters and min_tokens count a pending token (sampled, still on device) as generated, so
    seeded sampling draws the same numbers with the overlap on or off; its id in the penalty
    history is filled in on the device (``PENDING_TOKEN``).
    """
    side = [seqs[i] for i, slot in zip(taking, slots, strict=True) if store.has_side_inputs[slot]]
    side_rows = [int(r) for r, slot in zip(rows, slots, strict=True) if store.has_side_inputs[slot]]
    bias_width, history_width = _side_widths(side, eos_ids)
    t = empty_sampling(s_pad, bias_width, history_width)
    for column, name in enumerate(FLOAT_SETTINGS):
        getattr(t, name)[rows] = store.floats[slots, column]
    t.top_k[rows] = store.top_k[slots]
    t.seeds[rows] = store.seeds[slots]
    t.counters[rows] = [seqs[i].num_output_tokens for i in taking]
    for seq, row in zip(side, side_rows, strict=True):
        _fill_side_inputs(t, row, seq, eos_ids)
    return t


def _side_widths(seqs: list[Sequence], eos_ids: frozenset[int]) -> tuple[int, int]:
    bias, history = 0, 0
    for seq in seqs:
        p = seq.params
        n = len(p.logit_bias or {})
        if seq.num_output_tokens < p.min_tokens:
            n += len(eos_ids) + len(p.stop_token_ids or ())
        bias = max(bias, n)
        if p.uses_penalties:
            history = max(history, seq.num_tokens)
    return (pow2_at_least(bias) if bias else 0), (pow2_at_least(history, 16) if history else 0)


def _fill_side_inputs(t: SamplingTensors, row: int, seq: Sequence, eos_ids: frozenset[int]) -> None:
    p = seq.params
    generated = seq.num_output_tokens
    if p.logit_bias or generated < p.min_tokens:
        entries = list((p.logit_bias or {}).items())
        if generated < p.min_tokens:
            entries += [(tok, -math.inf) for tok in (*eos_ids, *(p.stop_token_ids or ()))]
        for j, (tok, value) in enumerate(entries):
            t.bias_ids[row, j], t.bias_values[row, j] = tok, value
    if p.uses_penalties and t.history.shape[1]:
        known = len(seq.token_ids)
        t.history[row, :known] = seq.token_ids
        t.history[row, known : seq.num_tokens] = PENDING_TOKEN
        t.history_is_output[row, seq.num_prompt_tokens : seq.num_tokens] = True
