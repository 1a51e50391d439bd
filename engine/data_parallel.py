"""Data-parallel replicas inside one engine: one scheduler slice per dp replica.

Design (docs/sharding.md): the replicas share one jitted step; the mesh's ``dp`` axis splits
the step's sequences and every layer's KV block pool, so replica ``r`` runs its own
sequences against its own blocks. Each replica therefore needs its own block pool and its own
scheduler (token budget, preemption and prefix cache within its pool);
``DataParallelScheduler`` holds one ``Scheduler`` + ``BlockManager`` per replica, sends each
new request to the replica holding the longest cached prefix of it (else the least loaded),
and merges their batches, tagging each sequence with its replica. Block ids in block tables
are local to a replica, which is what the replica's slice of the pool expects; copy-on-write
copies act on the whole pool, so they are offset to global ids.

Both stand in for the plain ``Scheduler`` and ``BlockManager`` through the protocols of
engine/scheduler_protocols.py.
"""

from __future__ import annotations

import dataclasses

from engine.block_manager import BlockManager
from engine.scheduler import ScheduledBatch, Scheduler
from engine.sequence import Sequence


@dataclasses.dataclass
class DataParallelBatch(ScheduledBatch):
    dp_ranks: list[int] = dataclasses.field(default_factory=list)  # replica of each scheduled sequence


class PooledBlockManager:
    """The replicas' block managers seen as one, for stats."""

    def __init__(self, managers: list[BlockManager]) -> None:
        self.managers = managers
        self.block_size = managers[0].block_size

    @property
    def prefix_queries(self) -> int:
        return sum(m.prefix_queries for m in self.managers)

    @property
    def prefix_hits(self) -> int:
        return sum(m.prefix_hits for m in self.managers)

    @property
    def num_blocks(self) -> int:
        return sum(m.num_blocks for m in self.managers)

    @property
    def num_free_blocks(self) -> int:
        return sum(m.num_free_blocks for m in self.managers)

    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks


class DataParallelScheduler:
    def __init__(
        self, num_replicas: int, blocks_per_replica: int, block_size: int, max_num_seqs: int,
        max_num_batched_tokens: int, enable_chunked_prefill: bool = True, enable_prefix_caching: bool = True,
    ) -> None:
        managers = [BlockManager(blocks_per_replica, block_size, enable_prefix_caching) for _ in range(num_replicas)]
        self.blocks_per_replica = blocks_per_replica
        self.replicas = [
            Scheduler(m, max_num_seqs, max_num_batched_tokens, enable_chunked_prefill) for m in managers
        ]
        self.block_manager = PooledBlockManager(managers)
        self._rank: dict[int, int] = {}  # seq_id -> replica

    @property
    def running(self) -> list[Sequence]:
        return [seq for replica in self.replicas for seq in replica.running]

    @property
    def waiting(self) -> list[Sequence]:
        return [seq for replica in self.replicas for seq in replica.waiting]

    @property
    def num_preemptions(self) -> int:
        return sum(replica.num_preemptions for replica in self.replicas)

    def add(self, seq: Sequence) -> None:
        """Queues ``seq`` where its cached prefix is longest, then where fewest sequences wait or
        run, then where most blocks are free. Samples forked from it (n > 1) share its blocks, so
        they go where it goes."""
        rank = self._rank.get(seq.seq_id)
        if rank is None:
            rank = min(range(len(self.replicas)), key=lambda r: self._placement_cost(r, seq))
            self._rank[seq.seq_id] = rank
        for child in seq.forks:
            self._rank[child.seq_id] = rank
        self.replicas[rank].add(seq)

    def _placement_cost(self, rank: int, seq: Sequence) -> tuple[int, int, int]:
        replica = self.replicas[rank]
        return (-len(replica.block_manager.match_prefix(seq)), len(replica.running) + len(replica.waiting),
                -replica.block_manager.num_free_blocks)

    def has_unfinished(self) -> bool:
        return any(replica.has_unfinished() for replica in self.replicas)

    def finish(self, seq: Sequence) -> None:
        rank = self._rank.pop(seq.seq_id, None)
        if rank is not None:
            self.replicas[rank].finish(seq)

    def complete(self, batch: ScheduledBatch) -> None:
        if not isinstance(batch, DataParallelBatch):
            raise TypeError(f"a data-parallel scheduler completes its own batches, got a {type(batch).__name__}")
        for rank, replica in enumerate(self.replicas):
            mine = [i for i, r in enumerate(batch.dp_ranks) if r == rank]
            replica.complete(ScheduledBatch([batch.seqs[i] for i in mine], [batch.num_new_tokens[i] for i in mine]))

    def schedule(self) -> DataParallelBatch:
        batch = DataParallelBatch([], [])
        for rank, replica in enumerate(self.replicas):
            part = replica.schedule()
            offset = rank * self.blocks_per_replica
            batch.seqs += part.seqs
            batch.num_new_tokens += part.num_new_tokens
            batch.num_preempted += part.num_preempted
            batch.copies += [(src + offset, dst + offset) for src, dst in part.copies]
            batch.dp_ranks += [rank] * len(part.seqs)
        return batch
