"""Physical KV blocks of one pool: reference counts, an LRU free queue, and the prefix cache of full blocks."""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence

BlockHash = bytes
_ROOT = bytes(32)


def hash_block(parent: BlockHash | None, token_ids: Sequence[int], extra: bytes = b"") -> BlockHash:
    """Content key of a full block: its parent's key, its token ids, and anything else that changes its K/V.

    A cryptographic hash, so no prompt can be crafted to collide with another request's blocks.
    `extra` is for what would make equal tokens store different K/V (a LoRA, an image, a cache salt).
    """
    h = hashlib.sha256(parent or _ROOT)
    h.update(len(extra).to_bytes(4, "little"))
    h.update(extra)
    h.update(array("q", token_ids).tobytes())
    return h.digest()


def extend_block_hashes(hashes: list[BlockHash], token_ids: Sequence[int], num_blocks: int, block_size: int,
                        extra: bytes = b"") -> None:
    """Grow `hashes` (one per full block of token_ids, chained) to at least num_blocks entries."""
    while len(hashes) < num_blocks:
        j = len(hashes)
        hashes.append(hash_block(hashes[-1] if hashes else None, token_ids[j * block_size : (j + 1) * block_size],
                                 extra))


class BlockPool:
    """Block ids with reference counts; a block nobody holds waits in the free queue, still findable by its hash
    when it is full, until allocation reuses it (least recently freed first, blocks without a hash before any)."""

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self.free_ids: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.refs = [0] * num_blocks
        self.block_hash: list[BlockHash | None] = [None] * num_blocks
        self.cached: dict[BlockHash, int] = {}

    @property
    def num_free(self) -> int:
        """Blocks nobody holds (cached ones included: they are evicted on demand)."""
        return len(self.free_ids)

    @property
    def num_cached(self) -> int:
        """Blocks findable by content, held or not."""
        return len(self.cached)

    def allocate(self) -> int:
        """Take the block at the head of the free queue, evicting its hash (caller checked num_free)."""
        block, _ = self.free_ids.popitem(last=False)
        h = self.block_hash[block]
        if h is not None:
            del self.cached[h]
            self.block_hash[block] = None
        self.refs[block] = 1
        return block

    def share(self, block: int) -> None:
        """One more holder of a block; a cached block nobody held leaves the free queue."""
        if self.refs[block] == 0:
            del self.free_ids[block]
        self.refs[block] += 1

    def release(self, block: int) -> None:
        """Drop one holder; with none left the block joins the free queue (at its head if it has no hash)."""
        self.refs[block] -= 1
        if self.refs[block] == 0:
            self.free_ids[block] = None
            if self.block_hash[block] is None:
                self.free_ids.move_to_end(block, last=False)

    def lookup(self, h: BlockHash) -> int | None:
        """The block holding content `h`, if one is cached."""
        return self.cached.get(h)

    def cache(self, block: int, h: BlockHash) -> None:
        """Make a full, computed block findable by `h`; the first block cached under a hash keeps it."""
        if h not in self.cached and self.block_hash[block] is None:
            self.cached[h] = block
            self.block_hash[block] = h

    def reset_cache(self) -> None:
        """Forget every hash; blocks in use stay valid for their holders."""
        self.cached.clear()
        self.block_hash = [None] * self.num_blocks
