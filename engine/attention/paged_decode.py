"""Decode attention that reads the paged KV cache in place, compiled by inductor for the CPU path.

The torch backend otherwise gathers every sequence's blocks into a dense copy per layer and runs SDPA
on it. Written as a broadcast product and sums, inductor turns the block-table lookups into indirect
loads inside its dot-product and weighted-sum loops, so the context is read in place and never copied.
"""

from __future__ import annotations

import logging
import threading

import torch
import torch._dynamo.config as dynamo_config
import torch.fx.experimental._config as fx_config

logger = logging.getLogger(__name__)


def paged_decode_attention(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                           mask: torch.Tensor, scale: float) -> torch.Tensor:
    """One query token per sequence against the keys and values its block table addresses.

    q [B, H, D]; kv_cache [2, num_blocks, block_size, Hkv, D]; block_tables [B, W], every
    entry a valid block (padding entries clamped); mask [B, 1, G, W * block_size], the query heads of a KV
    head grouped as in attention._group_mask. Returns [B, H, D]. Eager, it materialises [B, Hkv, G, T, D]:
    call it through `compiled_paged_decode`.
    """
    b, w = block_tables.shape
    _, _, block_size, num_kv_heads, head_dim = kv_cache.shape
    g = q.shape[1] // num_kv_heads

    def context(i: int) -> torch.Tensor:  # [B, Hkv, 1, T, D]
        rows = kv_cache[i][block_tables].view(b, w * block_size, num_kv_heads, head_dim)
        return rows.transpose(1, 2)[:, :, None].float()

    scores = (q.view(b, num_kv_heads, g, 1, head_dim).float() * scale * context(0)).sum(-1)
    probs = scores.masked_fill(~mask.view(b, 1, g, w * block_size), float("-inf")).softmax(-1)
    out = (probs[..., None] * context(1)).sum(-2)
    return out.to(q.dtype).view(b, num_kv_heads * g, head_dim)


_compiled = torch.compile(paged_decode_attention, dynamic=False)
# Batch size, table width and pool size vary; head counts, head size and block size are the model's and
# stay constants, so inductor vectorises over the head dimension (all-symbolic code ran ~3x slower).
_DYNAMIC_DIMS = ((0, 0), (1, 1), (2, [0, 1]), (3, 0))


# The config patches below are process-wide: engines in other threads (tests) take turns through them.
_config_lock = threading.Lock()


def compiled_paged_decode(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                          mask: torch.Tensor, scale: float) -> torch.Tensor:
    """paged_decode_attention under inductor: one graph per model and dtype, whatever the batch and context."""
    # The graph guards on input strides: q contiguous as in the stand-in it was compiled on (the model's q is
    # a view into the fused QKV output), the mask flat (for a batch of 1 its leading stride is arbitrary).
    args = (q.contiguous(), kv_cache, block_tables, mask.flatten())
    for arg, dims in _DYNAMIC_DIMS:
        torch._dynamo.mark_dynamic(args[arg], dims)
    # Size-oblivious: a batch or table width of 1 would otherwise be its own graph, compiled mid-serving.
    # A graph per model shape and dtype: a process that loads many models (the tests) needs more than
    # dynamo's default 8, and past the limit dynamo would run the function eagerly, materialising the whole
    # context; failing instead lets the caller fall back to its gather.
    with _config_lock, fx_config.patch(backed_size_oblivious=True), \
            dynamo_config.patch(recompile_limit=64, fail_on_recompile_limit_hit=True):
        return _compiled(*args, scale)


class InPlaceDecode:
    """compiled_paged_decode for one engine: compiled at start-up (`compile`), off for good where that fails.

    Not compiled in the background: torch.compiler.is_compiling() is process-wide, so eager code running in
    another thread meanwhile (the packed matmuls) would take its traced branch.
    """

    def __init__(self) -> None:
        self.ready = False

    @torch.inference_mode()  # as the model runs: dynamo guards on it, and another mode would recompile
    def compile(self, kv_cache: torch.Tensor, num_heads: int, scale: float) -> None:
        """Compile the graph for this model and dtype on stand-in inputs (2 sequences of 2 blocks)."""
        _, _, block_size, num_kv_heads, head_dim = kv_cache.shape
        q = kv_cache.new_zeros(2, num_heads, head_dim)
        mask = torch.ones(2, 1, num_heads // num_kv_heads, 2 * block_size, dtype=torch.bool)
        self.ready = True
        self(q, kv_cache, torch.zeros(2, 2, dtype=torch.int64), mask, scale)

    def __call__(self, q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                 mask: torch.Tensor, scale: float) -> torch.Tensor | None:
        """The attention, or None where it cannot be compiled (the caller gathers instead)."""
        if not self.ready:
            return None
        try:
            return compiled_paged_decode(q, kv_cache, block_tables, mask, scale)
        except Exception as e:  # e.g. no C++ compiler for inductor on this machine
            logger.warning("decode attention cannot be compiled here (%s: %s); it gathers the context into a "
                           "dense copy instead, which is slower at long contexts", type(e).__name__, e)
            self.ready = False
            return None
