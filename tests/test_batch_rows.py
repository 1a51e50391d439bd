"""Persistent per-sequence rows (engine/batch_rows.py): only changed block-table entries are
copied, and a sequence whose row cannot be placed fails alone."""

from __future__ import annotations

import numpy as np
import pytest

from engine import SamplingParams
from engine.batch_rows import BatchRows
from engine.block_manager import BlockManager
from engine.sequence import Sequence
from tests.tiny_models import run_to_completion, tiny_engine


def test_rows_follow_block_table_changes() -> None:
    bm = BlockManager(16, 4)
    rows = BatchRows(capacity=4, max_blocks_per_seq=8)
    seq = Sequence("a", 0, list(range(6)), SamplingParams(max_tokens=8), 0, 8)
    bm.allocate(seq, 6)
    slots, failed = rows.place([seq])
    assert not failed and list(rows.tables[slots[0], :2]) == seq.block_table
    seq.num_computed_tokens = 6
    bm.allocate(seq, 3)  # crosses into a third block: one appended id
    assert seq.table_dirty_from == 2
    rows.place([seq])
    assert list(rows.tables[slots[0], :3]) == seq.block_table
    bm.free(seq)  # preempted: the table restarts from scratch
    seq.num_computed_tokens = 0
    bm.allocate(seq, 9)
    rows.place([seq])
    assert list(rows.tables[slots[0], :3]) == seq.block_table
    assert not rows.tables[slots[0], 3:].any()


def test_full_store_keeps_the_current_sequences() -> None:
    rows = BatchRows(capacity=3, max_blocks_per_seq=2)
    seqs = [Sequence(str(i), 0, [1, 2], SamplingParams(temperature=0.5 + i, max_tokens=1), i, 1) for i in range(5)]
    rows.place(seqs[:3])
    slots, failed = rows.place(seqs[3:])  # no free slot: the old rows are forgotten, not these
    assert not failed and len(set(slots.tolist())) == 2
    np.testing.assert_allclose(rows.floats[slots, 0], [3.5, 4.5])


@pytest.mark.parametrize("overlap", [False, True])
def test_a_row_that_cannot_be_placed_fails_only_its_request(overlap: bool) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
    prompts = {"a": [5, 6, 7], "bad": [8, 9, 10, 11], "c": [12, 13]}
    reference = tiny_engine(async_scheduling=overlap)
    for rid in ("a", "c"):
        reference.add_request(rid, prompts[rid], params)
    expected = {rid: out.outputs[0].token_ids for rid, out in run_to_completion(reference).items()}

    engine = tiny_engine(async_scheduling=overlap)
    for rid, prompt in prompts.items():
        engine.add_request(rid, prompt, params if rid != "bad" else SamplingParams(max_tokens=5, temperature=0.5))
    engine.requests["bad"].seqs[0].params.top_k = 2**40  # past validation: does not fit int32
    done = run_to_completion(engine)
    assert done["bad"].outputs[0].finish_reason == "error"
    assert {rid: done[rid].outputs[0].token_ids for rid in ("a", "c")} == expected
    assert engine.stats().num_free_blocks == engine.stats().num_blocks
