"""Decode attention in C++ that reads the paged KV cache in place (engine/attention/cpu_decode_kernels.cpp).

Built once where `engine.cpu_features.quant_kernel_path` says the CPU and toolchain can run AVX2 kernels.
The model runner asks `serves` once at start-up; where it says no (another dtype or head shape, no AVX2 or
compiler) the torch backend keeps its other decode paths.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from engine.cpu_features import load_cpu_kernels, quant_kernel_path

SOURCE = Path(__file__).with_name("cpu_decode_kernels.cpp")
MAX_GROUP = 16  # query heads per KV head the kernel holds accumulators for


@functools.cache
def _build() -> bool:
    return load_cpu_kernels("exaone_cpu_attention", SOURCE)


def kernel_available() -> bool:
    """Whether this CPU runs the kernel and it is built and loaded here (the build once per process)."""
    return quant_kernel_path()[0] and _build()


def serves(dtype: torch.dtype, num_heads: int, num_kv_heads: int, head_dim: int) -> bool:
    """Whether the kernel takes a model's decodes: fp32, a head size that fills AVX2 vectors, <= 16 query heads
    per KV head, and the kernel available here."""
    return (dtype == torch.float32 and head_dim % 8 == 0 and num_heads // num_kv_heads <= MAX_GROUP
            and kernel_available())


def cpu_paged_decode(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor, mask: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """paged_decode_attention's contract (engine.attention.paged_decode) in one C++ pass, for a model `serves`
    said yes to: q [B, H, D]; kv_cache [2, num_blocks, block_size, Hkv, D] contiguous; block_tables [B, W] with
    every entry a valid block; mask [B, 1, G, W * block_size]. Returns [B, H, D]."""
    return torch.ops.exaone_cpu_attention.paged_decode(q.contiguous(), kv_cache, block_tables.contiguous(),
                                                       mask.contiguous(), scale)
