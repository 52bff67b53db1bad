"""The GPU attention backend: Triton kernels for cache writes, attention and the fused small ops."""

from __future__ import annotations

import os

import torch

from engine.attention.backend import AttentionBackend, AttentionMetadata, KVLayout
from kernels import fused
from kernels.attention import SplitKScratch, paged_attention
from kernels.cache import write_kv_cache

SPLIT_K_SEGMENTS = 16


class TritonAttentionBackend(AttentionBackend):
    """Paged attention in one kernel for decodes and prefill chunks; split-K for small decode batches."""

    rms_norm = staticmethod(fused.rms_norm)
    qk_norm_rope = staticmethod(fused.qk_norm_rope)
    silu_and_mul = staticmethod(fused.silu_and_mul)

    def __init__(self, device: torch.device, num_heads: int, head_dim: int, max_num_seqs: int) -> None:
        interpreted = os.environ.get("TRITON_INTERPRET") == "1"
        if device.type != "cuda" and not interpreted:
            raise ValueError("the triton attention backend needs a CUDA device "
                             "(or TRITON_INTERPRET=1 to run its kernels in Triton's interpreter)")
        # Split-K pays when (sequences x KV heads) programs leave most of the GPU idle.
        self.num_sms = (torch.cuda.get_device_properties(device).multi_processor_count
                        if device.type == "cuda" else 4)
        self.scratch = SplitKScratch(max_num_seqs, num_heads, head_dim, SPLIT_K_SEGMENTS, device)
        self.tile_n = 32  # keys per inner-loop tile; benchmarks/gpu_check.py sweeps it

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                layout: KVLayout, window: int | None, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        write_kv_cache(k, v, kv_cache, layout.slot_mapping)
        num_seqs = meta.seq_lens.shape[0]
        decode_only = meta.num_decodes == num_seqs
        split = decode_only and num_seqs * kv_cache.shape[3] < self.num_sms
        return paged_attention(q, kv_cache, layout.block_tables, meta.seq_lens, meta.query_start_loc, scale,
                               window, layout.ring_blocks, scratch=self.scratch if split else None,
                               max_query_len=1 if decode_only else None, tile_n=self.tile_n)
