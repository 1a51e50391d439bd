"""Continuous batching: which sequences run this step, and how many new tokens each.

One token budget covers decodes and prefill chunks alike, so a step mixes them. Running
sequences go first (oldest first); when blocks run out the newest running sequence is
preempted by recompute (its blocks freed, it goes back to the front of the queue).

With the overlap a running sequence may have a pending token (sampled, not yet read back):
it is scheduled as if that token were known, except when that token is its last by length.
"""

from __future__ import annotations

import dataclasses
from collections import deque

from engine.block_manager import BlockManager
from engine.sequence import Sequence, SequenceStatus


@dataclasses.dataclass
class ScheduledBatch:
    seqs: list[Sequence]
    num_new_tokens: list[int]
    num_preempted: int = 0
    copies: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # copy-on-write (src, dst)

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    def __bool__(self) -> bool:
        return bool(self.seqs)


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        enable_chunked_prefill: bool = True,
    ) -> None:
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.enable_chunked_prefill = enable_chunked_prefill
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, seq: Sequence) -> None:
        """Removes a sequence (finished or aborted) wherever it is and frees its blocks."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        seq.status = SequenceStatus.FINISHED
        self.block_manager.free(seq)

    def complete(self, batch: ScheduledBatch) -> None:
        """Records the step's computed tokens: registers full blocks, forks waiting samples."""
        for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
            if seq.is_finished:
                continue  # ended while this step ran (overlap): its blocks are already free
            seq.num_computed_tokens += n
            self.block_manager.register_computed_blocks(seq)
            if seq.forks and seq.num_computed_tokens >= seq.num_prompt_tokens:
                for child in seq.forks:
                    if child.awaiting_fork:
                        self.block_manager.fork(seq, child)
                        child.awaiting_fork = False
                seq.forks = []

    def _release(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.num_cached_tokens = 0

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._release(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch([], [])
        budget = self._schedule_running(batch, self.max_num_batched_tokens)
        if not batch.num_preempted:  # blocks ran short: admit nothing new this step
            self._admit_waiting(batch, budget)
        return batch

    def _schedule_running(self, batch: ScheduledBatch, budget: int) -> int:
        """Adds the running sequences, oldest first, preempting the newest when blocks run out;
        returns the token budget left."""
        for seq in list(self.running):
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted earlier in this loop
            if seq.num_pending and seq.num_output_tokens >= seq.max_tokens:
                continue  # its pending token is its last: it ends once that token is read back
            n = min(seq.remaining_to_compute(), budget)
            if not self._make_room(seq, n, batch):
                continue
            batch.copies += self.block_manager.allocate(seq, n)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(n)
            budget -= n
        return budget

    def _make_room(self, seq: Sequence, n: int, batch: ScheduledBatch) -> bool:
        """Preempts the newest running sequences until ``n`` more tokens of ``seq`` fit; False
        when ``seq`` itself had to go."""
        while not self.block_manager.can_allocate(self.block_manager.blocks_needed(seq, n)):
            victim = self.running[-1]
            self._preempt(victim)
            batch.num_preempted += 1
            if victim is seq:
                return False
        return True

    def _admit_waiting(self, batch: ScheduledBatch, budget: int) -> None:
        """Admits waiting sequences in order while the budget, max_num_seqs and the free blocks allow."""
        for seq in list(self.waiting):
            if budget == 0 or len(self.running) >= self.max_num_seqs:
                break
            if seq.awaiting_fork:
                continue  # admitted once its parent's prompt is computed
            fresh = seq.num_computed_tokens == 0 and not seq.block_table
            if fresh:
                self.block_manager.reuse_cached_prefix(seq)
            remaining = seq.remaining_to_compute()
            n = min(remaining, budget)
            fits = self.block_manager.can_allocate(self.block_manager.blocks_needed(seq, n))
            if not fits or (n < remaining and not self.enable_chunked_prefill):
                if fresh:
                    self._release(seq)
                break
            self.waiting.remove(seq)
            if fresh:
                self.block_manager.prefix_queries += seq.num_tokens
                self.block_manager.prefix_hits += seq.num_cached_tokens
            batch.copies += self.block_manager.allocate(seq, n)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(n)
            budget -= n
