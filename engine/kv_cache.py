"""KV block manager: a paged pool per layer kind; sliding-window pools keep a ring of recent blocks."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PoolSpec:
    """One KV pool: how many layers store into each block, and the window if they slide."""

    num_layers: int
    window: int | None


@dataclass
class BlockTable:
    """A sequence's blocks in one pool; logical blocks [lo, hi) are held.

    Global pools index `table` by logical block; sliding pools use a fixed ring of
    `ring_blocks` entries, logical block j in entry j % ring_blocks, -1 where none is held.
    """

    table: list[int] = field(default_factory=list)
    lo: int = 0
    hi: int = 0


class BlockPool:
    """Free list of physical block ids with reference counts (forked samples share full blocks)."""

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self.free_ids: deque[int] = deque(range(num_blocks))
        self.refs = [0] * num_blocks

    @property
    def num_free(self) -> int:
        """Blocks nobody holds."""
        return len(self.free_ids)

    def allocate(self) -> int:
        """Take a free block (caller checked num_free)."""
        block = self.free_ids.popleft()
        self.refs[block] = 1
        return block

    def share(self, block: int) -> None:
        """One more holder of an allocated block."""
        self.refs[block] += 1

    def release(self, block: int) -> None:
        """Drop one holder; the block is free when none is left."""
        self.refs[block] -= 1
        if self.refs[block] == 0:
            self.free_ids.append(block)


class KVCacheManager:
    """Allocates, recycles and frees blocks per sequence, per pool, step by step."""

    def __init__(self, pools: dict[str, PoolSpec], num_blocks: dict[str, int], block_size: int,
                 max_chunk: int) -> None:
        self.specs = pools
        self.block_size = block_size
        self.pools = {kind: BlockPool(num_blocks[kind]) for kind in pools}
        self.ring_blocks = {
            kind: ring_size(spec.window, block_size, max_chunk) for kind, spec in pools.items() if spec.window is not None
        }

    def _needed_range(self, kind: str, num_computed: int, num_new: int) -> tuple[int, int]:
        """Logical blocks [lo, hi) that a step computing tokens [num_computed, +num_new) touches."""
        window = self.specs[kind].window
        first = 0 if window is None else max(0, num_computed - window + 1)
        return first // self.block_size, (num_computed + num_new - 1) // self.block_size + 1

    def blocks_to_allocate(self, tables: dict[str, BlockTable], num_computed: int, num_new: int) -> dict[str, int]:
        """New blocks each pool must hand out for this step, net of recycled ones."""
        need = {}
        for kind in self.specs:
            bt = tables.get(kind) or BlockTable()
            lo, hi = self._needed_range(kind, num_computed, num_new)
            freed = max(0, min(lo, bt.hi) - bt.lo) if bt.hi > bt.lo else 0
            need[kind] = max(0, hi - max(bt.hi, lo)) - freed
        return need

    def allocate(self, tables: dict[str, BlockTable], num_computed: int, num_new: int) -> bool:
        """Make blocks ready for the next num_new tokens; False (and no change) if a pool is short."""
        need = self.blocks_to_allocate(tables, num_computed, num_new)
        if any(n > self.pools[kind].num_free for kind, n in need.items()):
            return False
        for kind, spec in self.specs.items():
            bt = tables.setdefault(kind, BlockTable())
            pool = self.pools[kind]
            lo, hi = self._needed_range(kind, num_computed, num_new)
            if spec.window is None:
                for _ in range(bt.hi, hi):
                    bt.table.append(pool.allocate())
                bt.hi = max(bt.hi, hi)
                continue
            ring = self.ring_blocks[kind]
            if not bt.table:
                bt.table = [-1] * ring
            for j in range(bt.lo, min(lo, bt.hi)):  # out of the window: recycle
                pool.release(bt.table[j % ring])
                bt.table[j % ring] = -1
            bt.lo = max(bt.lo, lo) if bt.hi > bt.lo else lo
            for j in range(max(bt.hi, lo), hi):
                bt.table[j % ring] = pool.allocate()
            bt.hi = max(bt.hi, hi)
        return True

    def free(self, tables: dict[str, BlockTable]) -> None:
        """Return every block a sequence holds."""
        for kind, bt in tables.items():
            for block in bt.table:
                if block >= 0:
                    self.pools[kind].release(block)
        tables.clear()

    def fork(self, parent: dict[str, BlockTable], num_tokens: int) -> tuple[dict[str, BlockTable], list[tuple[str, int, int]]]:
        """Tables for a sample sharing the parent's full blocks; the partial last block is copied.

        Returns the child's tables and (kind, src_block, dst_block) copies for the runner to do.
        Blocks are never written below num_tokens, so sharing full ones is safe.
        """
        child: dict[str, BlockTable] = {}
        copies = []
        last = (num_tokens - 1) // self.block_size if num_tokens % self.block_size else -1
        for kind, bt in parent.items():
            pool = self.pools[kind]
            ring = self.ring_blocks.get(kind)
            table = list(bt.table)
            for entry, block in enumerate(table):
                if block < 0:
                    continue
                is_last = last >= 0 and entry == (last % ring if ring else last)
                if is_last:
                    table[entry] = pool.allocate()
                    copies.append((kind, block, table[entry]))
                else:
                    pool.share(block)
            child[kind] = BlockTable(table, bt.lo, bt.hi)
        return child, copies

    def can_fork(self, parent: dict[str, BlockTable], num_tokens: int) -> bool:
        """True when every pool has a block for the copied partial block."""
        partial = num_tokens % self.block_size != 0
        return all(not partial or self.pools[kind].num_free >= 1 for kind in parent)

    def usage(self) -> dict[str, int]:
        """Blocks in use per pool."""
        return {kind: pool.num_blocks - pool.num_free for kind, pool in self.pools.items()}

    def num_blocks(self) -> dict[str, int]:
        """Pool sizes."""
        return {kind: pool.num_blocks for kind, pool in self.pools.items()}


def steady_blocks_per_seq(spec: PoolSpec, num_tokens: int, block_size: int, chunk: int = 1) -> int:
    """Blocks a sequence of num_tokens holds in one pool while computing `chunk` tokens."""
    if spec.window is None:
        return math.ceil(num_tokens / block_size)
    return min(math.ceil(num_tokens / block_size), ring_size(spec.window, block_size, chunk))


def split_budget(pools: dict[str, PoolSpec], bytes_per_layer_block: int, budget: int, max_num_seqs: int,
                 ring_blocks: dict[str, int]) -> dict[str, int]:
    """Number of blocks per pool for a byte budget.

    Sequences shorter than the window use as many blocks in every pool, so start from the same block
    count everywhere; a sliding pool never needs more than one full ring per running sequence, and
    what it would hold beyond that goes to the global pool.
    """
    layer_bytes = {kind: spec.num_layers * bytes_per_layer_block for kind, spec in pools.items()}
    even = budget // sum(layer_bytes.values())
    blocks = dict.fromkeys(pools, even)
    spare = 0
    for kind in ring_blocks:
        cap = max_num_seqs * ring_blocks[kind]
        if blocks[kind] > cap:
            spare += (blocks[kind] - cap) * layer_bytes[kind]
            blocks[kind] = cap
    if "global" in blocks:
        blocks["global"] += spare // layer_bytes["global"]
    return {kind: max(1, n) for kind, n in blocks.items()}


def ring_size(window: int, block_size: int, max_chunk: int) -> int:
    """Ring entries a sliding sequence needs: the last W-1 tokens plus a chunk, +1 for misalignment."""
    return math.ceil((window - 1 + max_chunk) / block_size) + 1
