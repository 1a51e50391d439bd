"""Host-side bookkeeping of the paged KV cache: free blocks, block tables, sharing.

Every block has a reference count and returns to the free queue only when its count reaches
zero, so the free count always comes back to the total once all sequences are gone.

Prefix caching: once a block is full and its KV computed, it is registered under a chained
hash of (parent block's hash, its token ids). A new sequence reuses the longest registered
prefix of its tokens. Freed blocks keep their registration while they wait in the free
queue (least recently freed first out), so a prefix survives until its memory is needed.
A hash match is always confirmed against the stored token ids, never trusted alone.

Copy-on-write: sequences forked from one prompt (n > 1) share its blocks; a sequence about
to write into a block someone else still holds gets a private copy first (done on device).
"""

from __future__ import annotations

from collections import OrderedDict

from engine.sequence import Sequence

BlockKey = tuple[int | None, tuple[int, ...]]


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"the KV cache needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.free_blocks: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.cached: dict[int, int] = {}  # chained hash -> block
        self.block_keys: dict[int, tuple[int, BlockKey]] = {}  # block -> (hash, key)
        self.prefix_queries = 0  # tokens looked up
        self.prefix_hits = 0  # tokens found
        self.num_copies = 0  # copy-on-write block copies issued

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    # ---- allocation ----------------------------------------------------------------------
    def _take_free_block(self) -> int:
        block, _ = self.free_blocks.popitem(last=False)
        registered = self.block_keys.pop(block, None)
        if registered is not None and self.cached.get(registered[0]) == block:
            del self.cached[registered[0]]  # evicted: its memory is needed now
        self.ref_counts[block] = 1
        return block

    def _hold(self, block: int) -> None:
        if self.ref_counts[block] == 0:
            del self.free_blocks[block]
        self.ref_counts[block] += 1

    def _write_needs_copy(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Whether the first block this step writes into is shared with another sequence."""
        first_write = max(seq.num_computed_tokens, seq.kv_present_tokens)
        index = first_write // self.block_size
        return (num_new_tokens > 0 and first_write < seq.num_computed_tokens + num_new_tokens
                and index < len(seq.block_table) and self.ref_counts[seq.block_table[index]] > 1)

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        total = seq.num_computed_tokens + num_new_tokens
        grow = max(0, -(-total // self.block_size) - len(seq.block_table))
        return grow + int(self._write_needs_copy(seq, num_new_tokens))

    def can_allocate(self, num_blocks: int) -> bool:
        return num_blocks <= self.num_free_blocks

    def allocate(self, seq: Sequence, num_new_tokens: int) -> list[tuple[int, int]]:
        """Makes room for ``num_new_tokens`` more tokens; returns (src, dst) block copies to do first."""
        needed = self.blocks_needed(seq, num_new_tokens)
        if needed > self.num_free_blocks:
            raise RuntimeError(f"asked for {needed} KV blocks with {self.num_free_blocks} free")
        copies = []
        if self._write_needs_copy(seq, num_new_tokens):
            index = max(seq.num_computed_tokens, seq.kv_present_tokens) // self.block_size
            shared = seq.block_table[index]
            private = self._take_free_block()
            self.ref_counts[shared] -= 1
            seq.block_table[index] = private
            seq.table_changed_from(index)
            copies.append((shared, private))
            self.num_copies += 1
        total = seq.num_computed_tokens + num_new_tokens
        seq.table_changed_from(len(seq.block_table))
        while len(seq.block_table) * self.block_size < total:
            seq.block_table.append(self._take_free_block())
        return copies

    def free(self, seq: Sequence) -> None:
        for block in reversed(seq.block_table):  # a prefix's tail is evicted before its head
            self.ref_counts[block] -= 1
            if self.ref_counts[block] < 0:
                raise RuntimeError(f"block {block} freed more often than allocated")
            if self.ref_counts[block] == 0:
                self.free_blocks[block] = None
        seq.block_table = []
        seq.table_changed_from(0)
        seq.block_hashes = []
        seq.kv_present_tokens = 0

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """Gives ``child`` the parent's prompt blocks (shared) with their KV already present."""
        prompt = parent.num_prompt_tokens
        child.block_table = parent.block_table[: -(-prompt // self.block_size)]
        child.table_changed_from(0)
        for block in child.block_table:
            self._hold(block)
        child.block_hashes = parent.block_hashes[: prompt // self.block_size]
        child.kv_present_tokens = prompt
        child.num_computed_tokens = prompt - 1  # recompute the last token to sample from it

    # ---- prefix caching ------------------------------------------------------------------
    def _key(self, parent: int | None, seq: Sequence, index: int) -> BlockKey:
        start = index * self.block_size
        return parent, tuple(seq.token_ids[start : start + self.block_size])

    def reuse_cached_prefix(self, seq: Sequence) -> int:
        """Points a fresh sequence at the longest cached prefix of its tokens; returns the block count.

        Call only when ``blocks_for_cached_prefix`` has been checked against the free count.
        """
        blocks = self.match_prefix(seq)
        for block in blocks:
            self._hold(block)
        seq.block_table = list(blocks)
        seq.table_changed_from(0)
        seq.block_hashes = [self.block_keys[b][0] for b in blocks]
        cached = len(blocks) * self.block_size
        seq.kv_present_tokens = cached
        seq.num_cached_tokens = cached
        seq.num_computed_tokens = min(cached, seq.num_tokens - 1)  # at least one token is computed
        return len(blocks)

    def match_prefix(self, seq: Sequence) -> list[int]:
        if not self.enable_prefix_caching:
            return []
        blocks: list[int] = []
        parent: int | None = None
        for index in range(seq.num_tokens // self.block_size):
            key = self._key(parent, seq, index)
            block = self.cached.get(hash(key))
            if block is None or self.block_keys[block][1] != key:
                break
            blocks.append(block)
            parent = hash(key)
        return blocks

    def free_blocks_used_by(self, blocks: list[int]) -> int:
        return sum(1 for b in blocks if self.ref_counts[b] == 0)

    def register_computed_blocks(self, seq: Sequence) -> None:
        """Registers the sequence's blocks that are now full and computed."""
        if not self.enable_prefix_caching:
            return
        full = min(seq.num_computed_tokens, len(seq.block_table) * self.block_size) // self.block_size
        while len(seq.block_hashes) < full:
            index = len(seq.block_hashes)
            key = self._key(seq.block_hashes[-1] if seq.block_hashes else None, seq, index)
            digest = hash(key)
            block = seq.block_table[index]
            if digest not in self.cached and block not in self.block_keys:
                self.cached[digest] = block
                self.block_keys[block] = (digest, key)
            seq.block_hashes.append(digest)
