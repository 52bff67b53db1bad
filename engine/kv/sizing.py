"""How large the KV pools are: one pool per layer kind, sized from a memory budget; max_model_len to fit."""

from __future__ import annotations

import logging
from collections import defaultdict

import torch

from engine.config import EngineConfig, ModelConfig
from engine.kv.kv_cache import KVCacheManager, PoolSpec, ring_size, split_budget, steady_blocks_per_seq
from engine.parallel.sizes import kv_heads_per_rank

logger = logging.getLogger(__name__)

CPU_DEFAULT_KV_BYTES = 1 << 30


def pool_specs(mcfg: ModelConfig) -> dict[str, PoolSpec]:
    """One KV pool per layer kind."""
    counts: dict[str, int] = defaultdict(int)
    for spec in mcfg.layers:
        counts[spec.kv_kind] += 1
    return {kind: PoolSpec(n, mcfg.sliding_window if kind == "sliding" else None) for kind, n in counts.items()}


def make_kv_manager(mcfg: ModelConfig, cfg: EngineConfig, dtype: torch.dtype, device: torch.device) -> KVCacheManager:
    """Pools per layer kind, sized from kv_cache_memory (CPU) or free GPU memory; per rank under TP."""
    pools = pool_specs(mcfg)
    elem = torch.tensor([], dtype=dtype).element_size()
    kv_heads = kv_heads_per_rank(mcfg.num_kv_heads, cfg.tensor_parallel_size)
    bytes_per_layer_block = 2 * cfg.block_size * kv_heads * mcfg.head_dim * elem
    budget = cfg.kv_cache_memory
    if budget is None and device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        budget = int(free - total * (1 - cfg.gpu_memory_utilization))
    if budget is None:
        budget = CPU_DEFAULT_KV_BYTES
    rings = {kind: ring_size(spec.window, cfg.block_size, cfg.max_num_batched_tokens)
             for kind, spec in pools.items() if spec.window is not None}
    num_blocks = split_budget(pools, bytes_per_layer_block, budget, cfg.max_running_seqs, rings)
    return KVCacheManager(pools, num_blocks, cfg.block_size, cfg.max_num_batched_tokens, cfg.enable_prefix_caching)


def fit_max_model_len(cfg: EngineConfig, kv: KVCacheManager) -> None:
    """Lower cfg.max_model_len to what one sequence can hold in every pool (with a warning).

    Otherwise a lone sequence could outgrow the cache, preempt itself and recompute forever."""
    fits = cfg.max_model_len
    for kind, spec in kv.specs.items():
        blocks = kv.pools[kind].num_blocks
        if steady_blocks_per_seq(spec, cfg.max_model_len, kv.block_size, cfg.max_num_batched_tokens) > blocks:
            fits = min(fits, blocks * kv.block_size)
    if fits < cfg.max_model_len:
        logger.warning("max_model_len lowered from %d to %d tokens: the KV cache holds at most %d tokens of "
                       "one sequence; raise --kv-cache-memory to serve %d", cfg.max_model_len, fits, fits,
                       cfg.max_model_len)
        cfg.max_model_len = fits
