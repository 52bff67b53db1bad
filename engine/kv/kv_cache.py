"""KV block manager: a paged pool per layer kind; sliding-window pools keep a ring of recent blocks;
full blocks of both stay findable by content (automatic prefix caching)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from engine.kv.block_pool import BlockHash, BlockPool, extend_block_hashes


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
    Logical blocks below `num_cached` were offered to the prefix cache already. `changed` lists the
    entries written in place since the runner last mirrored the table (engine.runner.block_tables).
    """

    table: list[int] = field(default_factory=list)
    lo: int = 0
    hi: int = 0
    num_cached: int = 0
    changed: list[int] = field(default_factory=list, compare=False, repr=False)


class KVCacheManager:
    """Allocates, recycles and frees blocks per sequence, per pool, step by step; finds cached prefixes."""

    def __init__(self, pools: dict[str, PoolSpec], num_blocks: dict[str, int], block_size: int,
                 max_chunk: int, enable_caching: bool = True) -> None:
        self.specs = pools
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.pools = {kind: BlockPool(num_blocks[kind]) for kind in pools}
        self.ring_blocks = {
            kind: ring_size(spec.window, block_size, max_chunk) for kind, spec in pools.items() if spec.window is not None
        }

    def _needed_range(self, kind: str, num_computed: int, num_new: int) -> tuple[int, int]:
        """Logical blocks [lo, hi) that a step computing tokens [num_computed, +num_new) touches."""
        return self._window_start(kind, num_computed), (num_computed + num_new - 1) // self.block_size + 1

    def _window_start(self, kind: str, num_computed: int) -> int:
        """First logical block the next token at position num_computed attends to."""
        window = self.specs[kind].window
        return 0 if window is None else max(0, num_computed - window + 1) // self.block_size

    def _entry(self, kind: str, j: int) -> int:
        ring = self.ring_blocks.get(kind)
        return j % ring if ring else j

    def blocks_to_allocate(self, tables: dict[str, BlockTable], num_computed: int, num_new: int) -> dict[str, int]:
        """New blocks each pool must hand out for this step, net of recycled ones that come free."""
        need = {}
        for kind in self.specs:
            bt = tables.get(kind) or BlockTable()
            lo, hi = self._needed_range(kind, num_computed, num_new)
            refs = self.pools[kind].refs
            freed = sum(1 for j in range(bt.lo, min(lo, bt.hi)) if refs[bt.table[self._entry(kind, j)]] == 1)
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
                bt.changed.extend(range(len(bt.table), hi))
                for _ in range(bt.hi, hi):
                    bt.table.append(pool.allocate())
                bt.hi = max(bt.hi, hi)
                continue
            ring = self.ring_blocks[kind]
            if not bt.table:
                bt.table = [-1] * ring
            for j in range(bt.lo, min(lo, bt.hi)):  # out of the window: recycle (still findable if cached)
                pool.release(bt.table[j % ring])
                bt.table[j % ring] = -1
                bt.changed.append(j % ring)
            bt.lo = max(bt.lo, lo) if bt.hi > bt.lo else lo
            for j in range(max(bt.hi, lo), hi):
                bt.table[j % ring] = pool.allocate()
                bt.changed.append(j % ring)
            bt.hi = max(bt.hi, hi)
        return True

    def trim(self, tables: dict[str, BlockTable], num_tokens: int) -> None:
        """Give back the blocks past the first num_tokens tokens (those of rejected draft tokens): the step that
        computes token num_tokens allocates its block again. Blocks the window already left stay recycled."""
        keep = -(-num_tokens // self.block_size)
        for kind, bt in tables.items():
            pool = self.pools[kind]
            for j in range(bt.hi - 1, max(keep, bt.lo) - 1, -1):
                entry = self._entry(kind, j)
                pool.release(bt.table[entry])
                bt.changed.append(entry)
                if kind in self.ring_blocks:
                    bt.table[entry] = -1
                else:
                    bt.table.pop()
            bt.hi = min(bt.hi, max(keep, bt.lo))

    def free(self, tables: dict[str, BlockTable]) -> None:
        """Return every block a sequence holds, the last logical block first (so it is evicted first)."""
        for kind, bt in tables.items():
            for j in range(bt.hi - 1, bt.lo - 1, -1):
                block = bt.table[self._entry(kind, j)]
                if block >= 0:
                    self.pools[kind].release(block)
        tables.clear()

    # ---- prefix caching -------------------------------------------------------------------

    def match_prefix(self, tables: dict[str, BlockTable], token_ids: list[int], hashes: list[BlockHash]) -> int:
        """Attach the longest cached prefix of token_ids to empty tables; returns its length in tokens.

        The hit is a whole number of blocks below len(token_ids) (at least one token is left to compute):
        every global block of it, and of each sliding pool the blocks the next token's window reads.
        """
        if not self.enable_caching:
            return 0
        bs = self.block_size
        max_blocks = (len(token_ids) - 1) // bs
        extend_block_hashes(hashes, token_ids, max_blocks, bs)
        num_blocks = self._longest_hit(hashes[:max_blocks])
        for kind in self.specs:
            pool = self.pools[kind]
            lo = self._window_start(kind, num_blocks * bs)
            bt = tables[kind] = BlockTable([-1] * self.ring_blocks[kind] if kind in self.ring_blocks else [],
                                           lo, num_blocks, num_blocks)
            for j in range(lo, num_blocks):
                block = pool.lookup(hashes[j])
                assert block is not None
                pool.share(block)
                if kind in self.ring_blocks:
                    bt.table[self._entry(kind, j)] = block
                else:
                    bt.table.append(block)
        return num_blocks * bs

    def _longest_hit(self, hashes: list[BlockHash]) -> int:
        """Largest k <= len(hashes) such that every pool holds the blocks a hit of k blocks needs."""
        candidates = set(range(1, len(hashes) + 1))
        for kind in self.specs:
            pool = self.pools[kind]
            valid, run = set(), 0  # run: cached blocks in a row ending at block k - 1
            for k, h in enumerate(hashes, start=1):
                run = run + 1 if pool.lookup(h) is not None else 0
                if run >= k - self._window_start(kind, k * self.block_size):
                    valid.add(k)
                elif kind not in self.ring_blocks:
                    break  # a global miss ends every longer hit
            candidates &= valid
        return max(candidates, default=0)

    def cache_blocks(self, tables: dict[str, BlockTable], token_ids: list[int], hashes: list[BlockHash],
                     num_computed: int) -> None:
        """Make the blocks that num_computed tokens have filled findable by content."""
        if not self.enable_caching:
            return
        full = num_computed // self.block_size
        extend_block_hashes(hashes, token_ids, full, self.block_size)
        for kind, bt in tables.items():
            pool = self.pools[kind]
            for j in range(max(bt.num_cached, bt.lo), min(full, bt.hi)):
                block = bt.table[self._entry(kind, j)]
                if block >= 0:
                    pool.cache(block, hashes[j])
            bt.num_cached = max(bt.num_cached, full)

    def reset_prefix_cache(self) -> None:
        """Forget every cached block (held blocks stay valid for their sequences)."""
        for pool in self.pools.values():
            pool.reset_cache()

    # ---- forking and accounting -----------------------------------------------------------

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
            table = list(bt.table)
            for entry, block in enumerate(table):
                if block < 0:
                    continue
                if last >= 0 and entry == self._entry(kind, last):
                    table[entry] = pool.allocate()
                    copies.append((kind, block, table[entry]))
                else:
                    pool.share(block)
            child[kind] = BlockTable(table, bt.lo, bt.hi, bt.num_cached)
        return child, copies

    def can_fork(self, parent: dict[str, BlockTable], num_tokens: int) -> bool:
        """True when every pool has a block for the copied partial block."""
        partial = num_tokens % self.block_size != 0
        return all(not partial or self.pools[kind].num_free >= 1 for kind in parent)

    def usage(self) -> dict[str, int]:
        """Blocks in use (held by a sequence) per pool."""
        return {kind: pool.num_blocks - pool.num_free for kind, pool in self.pools.items()}

    def num_cached(self) -> dict[str, int]:
        """Blocks findable by content per pool (held or evictable)."""
        return {kind: pool.num_cached for kind, pool in self.pools.items()}

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
