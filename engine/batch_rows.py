"""Per-sequence step inputs that outlive a step: block tables and sampler settings.

Why: most of a running sequence's step input does not change from one step to the next.
Its sampler settings are converted to arrays once, when it joins; its block table is copied
once and then only the entries the block manager changed (``Sequence.table_dirty_from``: an
appended block when it crosses a block boundary, a copy-on-write replacement, a reset on
preemption). A step gathers its rows from here with one fancy index per array.

Placing a sequence is where a value outside the arrays' range (a top_k beyond int32, a
non-numeric setting) surfaces; ``place`` reports such a sequence as failed so that only its
request ends, with an error, and the step goes on without it.
"""

from __future__ import annotations

import numpy as np

from engine.sequence import Sequence

FLOAT_SETTINGS = ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty")


class BatchRows:
    def __init__(self, capacity: int, max_blocks_per_seq: int) -> None:
        self.capacity = capacity
        self.tables = np.zeros((capacity, max_blocks_per_seq), np.int32)
        self.floats = np.zeros((capacity, len(FLOAT_SETTINGS)), np.float32)
        self.top_k = np.zeros(capacity, np.int32)
        self.seeds = np.zeros(capacity, np.uint32)
        self.has_side_inputs = np.zeros(capacity, bool)  # logit bias, min_tokens or penalties
        self.uses_filters = np.zeros(capacity, bool)
        self.logprobs = np.zeros(capacity, np.int32)  # requested top logprobs, -1: none
        self._slot_of: dict[int, int] = {}
        self._free = list(range(capacity))

    def place(self, seqs: list[Sequence]) -> tuple[np.ndarray, list[tuple[Sequence, Exception]]]:
        """Each sequence's slot (-1 where placing it failed) and the failures."""
        if len(self._free) < len(seqs):
            self._forget_all_but(seqs)
        slots = np.fromiter((self._slot_of.get(s.seq_id, -1) for s in seqs), np.int64, len(seqs))
        failed: list[tuple[Sequence, Exception]] = []
        for i in np.flatnonzero(slots < 0):
            try:
                slots[i] = self._add(seqs[i])
            except (OverflowError, ValueError, TypeError) as err:
                failed.append((seqs[i], err))
        for seq, slot in zip(seqs, slots, strict=True):
            if slot >= 0 and seq.table_dirty_from < len(seq.block_table):
                self._copy_table(seq, int(slot))
        return slots, failed

    def _add(self, seq: Sequence) -> int:
        slot = self._free[-1]
        p = seq.params
        self.floats[slot] = [getattr(p, name) for name in FLOAT_SETTINGS]
        self.top_k[slot] = p.top_k
        self.seeds[slot] = seq.seed & 0xFFFFFFFF
        self.has_side_inputs[slot] = bool(p.logit_bias or p.min_tokens or p.uses_penalties)
        self.uses_filters[slot] = p.uses_filters
        self.logprobs[slot] = -1 if p.logprobs is None else p.logprobs
        self._free.pop()
        self._slot_of[seq.seq_id] = slot
        self.tables[slot] = 0
        seq.table_dirty_from = 0
        return slot

    def _copy_table(self, seq: Sequence, slot: int) -> None:
        start, table = seq.table_dirty_from, seq.block_table
        if start == 0:
            self.tables[slot] = 0
        self.tables[slot, start : len(table)] = table[start:]
        seq.table_dirty_from = len(table)

    def _forget_all_but(self, seqs: list[Sequence]) -> None:
        """Frees the slots of sequences not in this step (finished, preempted or idle ones);
        one that comes back is placed afresh."""
        keep = {s.seq_id for s in seqs}
        for seq_id in [k for k in self._slot_of if k not in keep]:
            self._free.append(self._slot_of.pop(seq_id))
