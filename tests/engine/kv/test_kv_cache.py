"""Block accounting of the hybrid KV manager: rings stay bounded, nothing leaks, memory per sequence."""

import math
import random

from engine.kv.block_pool import extend_block_hashes
from engine.kv.kv_cache import (
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


# ---- prefix caching ---------------------------------------------------------------------------

def hybrid_kv(blocks: int = 64, window: int = 10, block: int = 4, chunk: int = 8) -> KVCacheManager:
    return KVCacheManager({"global": PoolSpec(1, None), "sliding": PoolSpec(3, window)},
                          {"global": blocks, "sliding": blocks}, block, max_chunk=chunk)


def run_prefill(kv: KVCacheManager, tokens: list[int], chunk: int = 8) -> dict[str, BlockTable]:
    """Allocate and 'compute' a prompt chunk by chunk, caching full blocks as the engine does."""
    tables: dict[str, BlockTable] = {}
    hashes: list = []
    done = kv.match_prefix(tables, tokens, hashes)
    while done < len(tokens):
        n = min(chunk, len(tokens) - done)
        assert kv.allocate(tables, done, n)
        done += n
        kv.cache_blocks(tables, tokens, hashes, done)
    return tables


def test_freed_blocks_of_both_pools_stay_findable_and_a_hit_needs_only_the_window():
    kv = hybrid_kv()
    prompt = list(range(100, 140))  # 10 blocks; the ring recycles the early sliding blocks while it runs
    kv.free(run_prefill(kv, prompt))
    assert kv.usage() == {"global": 0, "sliding": 0}
    assert kv.num_cached() == {"global": 10, "sliding": 10}  # recycled out-of-window blocks too
    tables: dict[str, BlockTable] = {}
    hit = kv.match_prefix(tables, [*prompt[:30], 7, 8], [])
    assert hit == 28  # 7 blocks: a whole number below the prompt length, not a multiple of the window
    assert tables["global"].table == [kv.pools["global"].lookup(h) for h in tables_hashes(prompt, 7)]
    # the window before position 28 is [19, 28): sliding blocks 4..6 only
    assert (tables["sliding"].lo, tables["sliding"].hi) == (4, 7)
    assert sum(b >= 0 for b in tables["sliding"].table) == 3
    assert kv.usage() == {"global": 7, "sliding": 3}
    kv.free(tables)
    assert kv.usage() == {"global": 0, "sliding": 0}


def tables_hashes(tokens: list[int], n: int) -> list:
    hashes: list = []
    extend_block_hashes(hashes, tokens, n, 4)
    return hashes


def test_hit_shrinks_to_where_the_sliding_window_is_cached():
    kv = hybrid_kv()
    prompt = list(range(100, 140))
    kv.free(run_prefill(kv, prompt))
    sliding = kv.pools["sliding"]
    # Evict sliding block 6: a hit of 7..9 blocks needs it in its window; 6 blocks need 3..5 only.
    sliding.block_hash[sliding.cached.pop(tables_hashes(prompt, 7)[6])] = None
    tables: dict[str, BlockTable] = {}
    assert kv.match_prefix(tables, prompt, []) == 24
    kv.free(tables)
    # A global miss caps the hit however much the sliding pool has.
    kv.reset_prefix_cache()
    assert kv.match_prefix({}, prompt, []) == 0


def test_randomized_sharing_aborts_and_pressure_leave_no_block_referenced():
    rng = random.Random(11)
    kv = hybrid_kv(blocks=24, window=6, block=4, chunk=8)
    prefixes = [[rng.randrange(1000) for _ in range(rng.randint(0, 30))] for _ in range(4)]
    live: list[tuple[dict[str, BlockTable], list[int], list, int]] = []
    hits = 0
    for _ in range(400):
        if live and rng.random() < 0.3:  # finish or abort one
            tables, *_ = live.pop(rng.randrange(len(live)))
            kv.free(tables)
            continue
        if rng.random() < 0.4 or not live:
            tokens = rng.choice(prefixes) + [rng.randrange(1000) for _ in range(rng.randint(1, 20))]
            tables, hashes = {}, []
            done = kv.match_prefix(tables, tokens, hashes)
            hits += done > 0
            live.append((tables, tokens, hashes, done))
        i = rng.randrange(len(live))
        tables, tokens, hashes, done = live[i]
        n = min(rng.choice([1, 8]), len(tokens) + 4 - done)
        while len(tokens) < done + n:
            tokens.append(rng.randrange(1000))  # decode
        if kv.allocate(tables, done, n):
            live[i] = (tables, tokens, hashes, done + n)
            kv.cache_blocks(tables, tokens, hashes, done + n)
        else:  # pool pressure: preempt it
            kv.free(tables)
            live.pop(i)
        check_refcounts(kv, [t for t, *_ in live])
    for tables, *_ in live:
        kv.free(tables)
    assert hits > 20
    assert kv.usage() == {"global": 0, "sliding": 0}
    for pool in kv.pools.values():
        assert all(r == 0 for r in pool.refs) and pool.num_free == pool.num_blocks


def check_refcounts(kv: KVCacheManager, live: list[dict[str, BlockTable]]) -> None:
    """Each block's count equals the tables holding it; free blocks are held by nobody; hashes map back."""
    for kind, pool in kv.pools.items():
        held = [0] * pool.num_blocks
        for tables in live:
            for block in tables.get(kind, BlockTable()).table:
                if block >= 0:
                    held[block] += 1
        assert held == pool.refs
        assert all(held[b] == 0 for b in pool.free_ids)
        assert all(pool.block_hash[b] == h for h, b in pool.cached.items())
