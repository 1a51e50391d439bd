"""What the engine asks of a scheduler and of its pool of KV blocks.

Two implementations of each stand in for one another: the plain ``Scheduler`` over one
``BlockManager``, and with dp replicas the ``DataParallelScheduler`` over a ``PooledBlockManager``
(engine/data_parallel.py). ``LLMEngine`` holds either through these protocols, so a member one of
them lacks is a type error rather than an AttributeError in the first data-parallel run.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from engine.scheduler import ScheduledBatch
from engine.sequence import Sequence


class BlockPool(Protocol):
    """The KV block pool seen as one, for stats."""

    @property
    def num_blocks(self) -> int: ...

    @property
    def num_free_blocks(self) -> int: ...

    @property
    def prefix_queries(self) -> int: ...  # prompt tokens looked up in the prefix cache

    @property
    def prefix_hits(self) -> int: ...  # of those, tokens whose KV was reused

    def usage(self) -> float: ...


class BatchScheduler(Protocol):
    """Continuous batching: takes sequences, hands out one batch per step, frees what ends."""

    @property
    def block_manager(self) -> BlockPool: ...

    @property
    def running(self) -> Collection[Sequence]: ...

    @property
    def waiting(self) -> Collection[Sequence]: ...

    @property
    def num_preemptions(self) -> int: ...

    def add(self, seq: Sequence) -> None: ...

    def finish(self, seq: Sequence) -> None: ...

    def has_unfinished(self) -> bool: ...

    def schedule(self) -> ScheduledBatch: ...

    def complete(self, batch: ScheduledBatch) -> None:
        """Takes back a batch this scheduler scheduled, once its tokens are computed."""
