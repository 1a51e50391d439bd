"""A sequence: one sample of one request, with its tokens, cache blocks and progress.

With the overlap (llm_engine.py) a sequence can have one *pending* token: sampled by a step
whose result has not reached the host yet. It counts in ``num_tokens`` (the scheduler plans
with it) but is not in ``token_ids`` until ``resolve_pending`` appends it; until then the
device finds it at row ``pending_row`` of that step's sampled-token buffer.
"""

from __future__ import annotations

import enum
import itertools
import time

from engine.outputs import PositionLogprobs
from engine.sampling_params import SamplingParams
from engine.structured_output.sequence_grammar import SequenceGrammar

_ids = itertools.count()


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    def __init__(
        self,
        request_id: str,
        index: int,
        prompt_token_ids: list[int],
        params: SamplingParams,
        seed: int,
        max_tokens: int,
        arrival_time: float | None = None,
    ) -> None:
        self.seq_id = next(_ids)
        self.request_id = request_id
        self.index = index
        self.token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.params = params
        self.seed = seed
        self.max_tokens = max_tokens
        self.arrival_time = arrival_time if arrival_time is not None else time.monotonic()
        self.status = SequenceStatus.WAITING
        self.block_table: list[int] = []
        self.table_dirty_from = 0  # block_table entries from here on changed since the runner last copied it
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0  # prompt tokens found in the prefix cache (reported)
        self.kv_present_tokens = 0  # positions below this already have KV in the cache: never rewrite
        self.block_hashes: list[int] = []  # chained hashes of this sequence's full, computed blocks
        self.awaiting_fork = False  # n > 1: waits for sample 0's prompt blocks, then shares them
        self.forks: list[Sequence] = []  # on sample 0: the samples waiting to share its prompt
        self.cumulative_logprob = 0.0
        self.logprobs: list[PositionLogprobs] = []
        self.prompt_logprobs: list[PositionLogprobs | None] = []
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None
        self.grammar: SequenceGrammar | None = None  # its output constraint (structured outputs)
        self.first_token_time: float | None = None
        self.num_pending = 0  # sampled tokens still on the device (0 or 1)
        self.pending_row = -1  # where: row of the last dispatched step's sampled-token buffer

    def table_changed_from(self, index: int) -> None:
        self.table_dirty_from = min(self.table_dirty_from, index)

    def mark_pending(self, row: int) -> None:
        self.num_pending = 1
        self.pending_row = row

    def resolve_pending(self, token: int) -> None:
        """The pending token has reached the host: it becomes a known token."""
        self.token_ids.append(token)
        self.num_pending = 0
        self.pending_row = -1

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids) + self.num_pending

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        """Generated so far, counting a pending token."""
        return self.num_tokens - self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def remaining_to_compute(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    def wants_prompt_logprobs(self) -> bool:
        return self.params.prompt_logprobs is not None and len(self.prompt_logprobs) < self.num_prompt_tokens
