"""The GPU attention backend: Triton kernels for cache writes, attention and the fused small ops."""

from __future__ import annotations

import os

import torch

from engine.attention.backend import AttentionBackend, AttentionMetadata, KVLayout
from exaone_kernels import fused
from exaone_kernels.attention import SplitKScratch, paged_attention
from exaone_kernels.cache import write_kv_cache

SPLIT_K_SEGMENTS = 16
# A decode in a step with a prefill chunk gets its own split-K launch from this context on: otherwise its
# one program per (sequence, KV head) reads the whole context while the chunk's programs are long done.
SPLIT_K_MIN_CONTEXT = 2048


class TritonAttentionBackend(AttentionBackend):
    """Paged attention in one kernel for decodes and prefill chunks; split-K for small decode batches, and for
    long decodes beside a prefill chunk (then two launches: the decodes, then the chunks)."""

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
        self.tile_n = 32  # keys per inner-loop tile of decode steps; benchmarks/gpu_check.py sweeps it
        # Prefill programs own 64 query rows: a wider key tile and more warps keep their tensor cores fed.
        self.prefill_tile_n, self.prefill_num_warps = 64, 8
        self.split_k_min_context = SPLIT_K_MIN_CONTEXT

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                layout: KVLayout, window: int | None, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        write_kv_cache(k, v, kv_cache, layout.slot_mapping)
        num_seqs, decodes = meta.seq_lens.shape[0], meta.num_decodes
        few = decodes * kv_cache.shape[3] < self.num_sms  # (sequences x KV heads) programs leave SMs idle
        if decodes == num_seqs:
            return self._attend(q, kv_cache, layout, window, scale, meta.seq_lens, meta.query_start_loc,
                                block_tables=layout.block_tables, split=few, decode_only=True)
        longest = meta.scratch.get("longest_decode")
        if longest is None:  # once per step, not per layer
            longest = meta.scratch["longest_decode"] = max(meta.seq_lens_host[:decodes], default=0)
        if not (few and longest >= self.split_k_min_context):
            return self._attend(q, kv_cache, layout, window, scale, meta.seq_lens, meta.query_start_loc,
                                block_tables=layout.block_tables, split=False, decode_only=False)
        out = torch.empty_like(q)
        # Decodes come first, one token each: rows [0, decodes) of q, then the chunks from token `decodes` on.
        self._attend(q[:decodes], kv_cache, layout, window, scale, meta.seq_lens[:decodes],
                     meta.query_start_loc[: decodes + 1], block_tables=layout.block_tables[:decodes], split=True,
                     decode_only=True, out=out[:decodes])
        chunk_starts = meta.scratch.get("chunk_starts")
        if chunk_starts is None:  # once per step, not per layer
            chunk_starts = meta.scratch["chunk_starts"] = meta.query_start_loc[decodes:] - decodes
        self._attend(q[decodes:], kv_cache, layout, window, scale, meta.seq_lens[decodes:], chunk_starts,
                     block_tables=layout.block_tables[decodes:], split=False, decode_only=False, out=out[decodes:])
        return out

    def _attend(self, q: torch.Tensor, kv_cache: torch.Tensor, layout: KVLayout, window: int | None, scale: float,
                seq_lens: torch.Tensor, query_start_loc: torch.Tensor, *, block_tables: torch.Tensor, split: bool,
                decode_only: bool, out: torch.Tensor | None = None) -> torch.Tensor:
        """One paged_attention launch over these sequences (split-K through the preallocated scratch)."""
        tiles = dict(tile_n=self.tile_n) if decode_only else dict(tile_n=self.prefill_tile_n,
                                                                   num_warps=self.prefill_num_warps)
        return paged_attention(q, kv_cache, block_tables, seq_lens, query_start_loc, scale, window,
                               layout.ring_blocks, out=out, scratch=self.scratch if split else None,
                               max_query_len=1 if decode_only else None, **tiles)
