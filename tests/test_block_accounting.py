"""Property test: whatever mix of arrivals, finishes, aborts and preemptions, no KV block leaks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine import SamplingParams
from engine.block_manager import BlockManager
from engine.scheduler import Scheduler
from engine.sequence import Sequence, SequenceStatus

actions = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(1, 70), st.integers(1, 20)),
        st.tuples(st.just("step"), st.just(0), st.just(0)),
        st.tuples(st.just("abort"), st.integers(0, 50), st.just(0)),
    ),
    min_size=1, max_size=80,
)


def _check_invariants(bm: BlockManager, scheduler: Scheduler) -> None:
    owned = [b for seq in scheduler.running for b in seq.block_table]
    owned += [b for seq in scheduler.waiting for b in seq.block_table]
    assert len(owned) == len(set(owned)), "a block is owned twice"
    assert all(c >= 0 for c in bm.ref_counts)
    assert bm.num_free_blocks + len(owned) == bm.num_blocks
    assert not set(owned) & set(bm.free_blocks), "a referenced block is on the free list"


@settings(max_examples=150, deadline=None)
@given(actions=actions, num_blocks=st.integers(6, 24), budget=st.integers(4, 64),
       chunked=st.booleans())
def test_no_leaks_under_random_traffic(actions: list, num_blocks: int, budget: int, chunked: bool) -> None:
    bm = BlockManager(num_blocks, block_size=4)
    scheduler = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=max(budget, 70 if not chunked else 1),
                          enable_chunked_prefill=chunked)
    seqs: list[Sequence] = []
    for kind, a, b in actions:
        if kind == "add" and (a + b) <= num_blocks * 4:
            seq = Sequence(str(len(seqs)), 0, list(range(a)), SamplingParams(max_tokens=b), 0, b)
            seqs.append(seq)
            scheduler.add(seq)
        elif kind == "abort" and seqs:
            seq = seqs[a % len(seqs)]
            if not seq.is_finished:
                scheduler.finish(seq)
        elif kind == "step":
            batch = scheduler.schedule()
            for seq, n in zip(batch.seqs, batch.num_new_tokens):
                seq.num_computed_tokens += n
                assert len(seq.block_table) * 4 >= seq.num_computed_tokens
                if seq.num_computed_tokens == seq.num_tokens:
                    seq.token_ids.append(1)
                    if seq.num_output_tokens >= seq.max_tokens:
                        scheduler.finish(seq)
        _check_invariants(bm, scheduler)
    while scheduler.has_unfinished():  # drain: everything must be able to finish
        batch = scheduler.schedule()
        assert batch, "scheduler stalled with work left"
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed_tokens += n
            if seq.num_computed_tokens == seq.num_tokens:
                seq.token_ids.append(1)
                if seq.num_output_tokens >= seq.max_tokens:
                    scheduler.finish(seq)
        _check_invariants(bm, scheduler)
    assert bm.num_free_blocks == bm.num_blocks
    assert all(s.status is SequenceStatus.FINISHED for s in seqs)
