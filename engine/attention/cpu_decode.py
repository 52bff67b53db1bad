"""Decode attention in C++ that reads the paged KV cache in place (engine/attention/cpu_decode_kernels.cpp).

Built once where `engine.cpu_features.quant_kernel_path` says the CPU and toolchain can run AVX2 kernels;
elsewhere, or for shapes and dtypes it does not take, `cpu_paged_decode` answers None and the torch backend
gathers the context for SDPA as before.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from engine.cpu_features import load_cpu_kernels, quant_kernel_path

SOURCE = Path(__file__).with_name("cpu_decode_kernels.cpp")
MAX_GROUP = 16  # query heads per KV head the kernel holds accumulators for


@functools.cache
def kernel_available() -> bool:
    """Whether the kernel is built and loaded here (once per process)."""
    return quant_kernel_path()[0] and load_cpu_kernels("exaone_cpu_attention", SOURCE)


def serves(dtype: torch.dtype, num_heads: int, num_kv_heads: int, head_dim: int) -> bool:
    """Whether the kernel takes a model's decodes: fp32, a head size that fills AVX2 vectors, <= 16 query heads
    per KV head, and the kernel built here."""
    return (dtype == torch.float32 and head_dim % 8 == 0 and num_heads // num_kv_heads <= MAX_GROUP
            and kernel_available())


def cpu_paged_decode(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor, mask: torch.Tensor,
                     scale: float) -> torch.Tensor | None:
    """paged_decode_attention's contract (engine.attention.paged_decode) in one C++ pass, or None where the
    kernel does not run: q [B, H, D]; kv_cache [2, num_blocks, block_size, Hkv, D]; block_tables [B, W] with
    every entry a valid block; mask [B, 1, G, W * block_size]. Returns [B, H, D]."""
    if (q.device.type != "cpu" or kv_cache.dtype != q.dtype or not kv_cache.is_contiguous()
            or not serves(q.dtype, q.shape[1], kv_cache.shape[3], q.shape[2])):
        return None
    return torch.ops.exaone_cpu_attention.paged_decode(q.contiguous(), kv_cache, block_tables.contiguous(),
                                                       mask.contiguous(), scale)
