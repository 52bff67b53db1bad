"""Block accounting of the hybrid KV manager: rings stay bounded, nothing leaks, memory per sequence."""

import math
import random

from engine.kv_cache import (
    BlockTable,
    KVCacheManager,
    PoolSpec,
    ring_size,
    split_budget,
    steady_blocks_per_seq,
)


def test_32b_shaped_hybrid_cache_is_under_30_percent_of_all_global():
    block, tokens = 16, 128 * 1024
    layer_bytes = 2 * block * 8 * 128 * 2  # K and V, 8 KV heads x 128, bf16
    hybrid = {"sliding": PoolSpec(48, 4096), "global": PoolSpec(16, None)}
    all_global = {"global": PoolSpec(64, None)}

    def seq_bytes(pools):
        return sum(s.num_layers * layer_bytes * steady_blocks_per_seq(s, tokens, block) for s in pools.values())

    ratio = seq_bytes(hybrid) / seq_bytes(all_global)
    assert ratio <= 0.30, ratio
    # A budget for 8 such sequences fits ~3x more of them in the hybrid layout.
    budget = 8 * seq_bytes(all_global)
    blocks = split_budget(hybrid, layer_bytes, budget, max_num_seqs=32, ring_blocks={"sliding": ring_size(4096, block, 1)})
    fits = min(blocks[k] // steady_blocks_per_seq(s, tokens, block) for k, s in hybrid.items())
    assert fits >= 3 * 8


def test_sliding_ring_stays_within_bound_and_recycles():
    block, window, chunk = 4, 10, 7
    kv = KVCacheManager({"sliding": PoolSpec(3, window), "global": PoolSpec(1, None)},
                        {"sliding": 64, "global": 64}, block, max_chunk=chunk)
    tables: dict[str, BlockTable] = {}
    computed = 0
    rng = random.Random(0)
    for _ in range(60):
        n = rng.choice([1, 1, 3, chunk])
        assert kv.allocate(tables, computed, n)
        bound = math.ceil((window - 1 + n) / block) + 1
        held = [b for b in tables["sliding"].table if b >= 0]
        assert len(held) <= bound
        assert len(set(held)) == len(held)
        # every position the step reads or writes maps to a held block
        for pos in range(max(0, computed - window + 1), computed + n):
            assert tables["sliding"].table[(pos // block) % kv.ring_blocks["sliding"]] >= 0
        computed += n
    assert len(tables["global"].table) == math.ceil(computed / block)
    kv.free(tables)
    assert kv.usage() == {"sliding": 0, "global": 0}


def test_allocate_is_all_or_nothing():
    kv = KVCacheManager({"global": PoolSpec(1, None)}, {"global": 2}, 4, max_chunk=8)
    tables: dict[str, BlockTable] = {}
    assert not kv.allocate(tables, 0, 12)
    assert kv.usage() == {"global": 0}
    assert kv.allocate(tables, 0, 8)
    assert kv.usage() == {"global": 2}


def test_fork_shares_full_blocks_and_copies_the_partial_one():
    kv = KVCacheManager({"global": PoolSpec(1, None), "sliding": PoolSpec(1, 6)},
                        {"global": 16, "sliding": 16}, 4, max_chunk=8)
    parent: dict[str, BlockTable] = {}
    assert kv.allocate(parent, 0, 10)
    child, copies = kv.fork(parent, 10)
    assert {k for k, _, _ in copies} == {"global", "sliding"}
    assert child["global"].table[:2] == parent["global"].table[:2]
    assert child["global"].table[2] != parent["global"].table[2]
    kv.free(parent)
    assert kv.usage()["global"] == 3
    kv.free(child)
    assert kv.usage() == {"global": 0, "sliding": 0}
