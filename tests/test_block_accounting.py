"""Property test: whatever mix of arrivals (shared prefixes, n > 1), finishes, aborts and
preemptions, reference counts match owners, no referenced block is free, and nothing leaks.

The overlap variant drives the scheduler the way LLMEngine does with async scheduling: a
step is scheduled before the previous step's tokens are read back (pending tokens), and
sequences found finished one step late are dropped from the step already launched."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from engine import SamplingParams
from engine.block_manager import BlockManager
from engine.scheduler import ScheduledBatch, Scheduler
from engine.sequence import Sequence, SequenceStatus

BLOCK = 4
PREFIX = list(range(100, 130))  # shared by requests that ask for it

actions = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(1, 40), st.integers(1, 12), st.integers(0, 30), st.integers(1, 3)),
        st.tuples(st.just("step"), st.just(0), st.just(0), st.just(0), st.just(0)),
        st.tuples(st.just("abort"), st.integers(0, 50), st.just(0), st.just(0), st.just(0)),
    ),
    min_size=1, max_size=80,
)


def _check_invariants(bm: BlockManager, scheduler: Scheduler) -> None:
    owners = Counter(b for seq in [*scheduler.running, *scheduler.waiting] for b in seq.block_table)
    for block, count in owners.items():
        assert bm.ref_counts[block] == count, f"block {block}: {bm.ref_counts[block]} refs, {count} owners"
        assert block not in bm.free_blocks, "a referenced block is on the free list"
    assert all(c >= 0 for c in bm.ref_counts)
    assert bm.num_free_blocks + len(owners) == bm.num_blocks


def _advance(scheduler: Scheduler, batch: ScheduledBatch) -> None:
    scheduler.complete(batch)
    for seq in batch.seqs:
        if seq.num_computed_tokens == seq.num_tokens:
            seq.token_ids.append(seq.num_tokens % 7)
            if seq.num_output_tokens >= seq.max_tokens:
                scheduler.finish(seq)


def _read_back(scheduler: Scheduler, batch: ScheduledBatch) -> None:
    """The launched step's tokens reach the host: pending tokens become known, stops are found."""
    for seq in batch.seqs:
        if seq.num_pending and not seq.is_finished:
            seq.resolve_pending(seq.num_tokens % 7)
            if seq.num_output_tokens >= seq.max_tokens:
                scheduler.finish(seq)


class OverlapDriver:
    """Schedule N+1, read back N, complete N+1 (LLMEngine.step with async scheduling)."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.in_flight: ScheduledBatch | None = None

    def step(self) -> bool:
        """Returns whether anything happened (a step launched or read back)."""
        batch = self.scheduler.schedule()
        previous = self.in_flight
        if previous is not None:
            _read_back(self.scheduler, previous)
        self.scheduler.complete(batch)
        for seq in batch.seqs:
            if not seq.is_finished and seq.num_computed_tokens == seq.num_tokens:
                seq.mark_pending(0)
        self.in_flight = batch if batch else None
        return bool(batch) or previous is not None


def _add_request(scheduler: Scheduler, request_id: str, prompt: list[int], max_tokens: int, n: int) -> list[Sequence]:
    """``n`` samples of one prompt: the first computes it, the others fork from it (as LLMEngine adds them)."""
    seqs = [Sequence(request_id, i, prompt, SamplingParams(max_tokens=max_tokens), i, max_tokens) for i in range(n)]
    for child in seqs[1:]:
        child.awaiting_fork = True
    seqs[0].forks = seqs[1:]
    for seq in seqs:
        scheduler.add(seq)
    return seqs


def _abort(scheduler: Scheduler, seqs: list[Sequence]) -> None:
    for seq in seqs:
        if not seq.is_finished:
            scheduler.finish(seq)


@settings(max_examples=150, deadline=None)
@given(actions=actions, num_blocks=st.integers(8, 30), budget=st.integers(4, 64),
       chunked=st.booleans(), caching=st.booleans(), overlap=st.booleans())
def test_no_leaks_under_random_traffic(actions: list, num_blocks: int, budget: int, chunked: bool,
                                       caching: bool, overlap: bool) -> None:
    bm = BlockManager(num_blocks, BLOCK, enable_prefix_caching=caching)
    scheduler = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=budget if chunked else 100,
                          enable_chunked_prefill=chunked)
    requests: list[list[Sequence]] = []
    driver = OverlapDriver(scheduler)
    for kind, a, b, shared, n in actions:
        if kind == "add":
            prompt = PREFIX[:shared] + list(range(a))
            if len(prompt) + b > (num_blocks // n) * BLOCK:
                continue
            requests.append(_add_request(scheduler, str(len(requests)), prompt, b, n))
        elif kind == "abort" and requests:
            _abort(scheduler, requests[a % len(requests)])
        elif kind == "step" and overlap:
            driver.step()
        elif kind == "step":
            _advance(scheduler, scheduler.schedule())
        _check_invariants(bm, scheduler)
    for _ in range(2000):  # drain: everything must be able to finish
        if not scheduler.has_unfinished() and driver.in_flight is None:
            break
        if overlap:
            assert driver.step(), "scheduler stalled with work left"
        else:
            batch = scheduler.schedule()
            assert batch, "scheduler stalled with work left"
            _advance(scheduler, batch)
        _check_invariants(bm, scheduler)
    assert not scheduler.has_unfinished()
    assert bm.num_free_blocks == bm.num_blocks
    assert all(s.status is SequenceStatus.FINISHED for seqs in requests for s in seqs)
