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


def cpu_paged_decode(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor, mask: torch.Tensor,
                     scale: float) -> torch.Tensor | None:
    """paged_decode_attention's contract (engine.attention.paged_decode) in one C++ pass, or None where the
    kernel does not run: q [B, H, D]; kv_cache [2, num_blocks, block_size, Hkv, D]; block_tables [B, W] with
    every entry a valid block; mask [B, 1, G, W * block_size]. Returns [B, H, D]."""
    heads, head_dim = q.shape[1], q.shape[2]
    if (q.dtype != torch.float32 or kv_cache.dtype != torch.float32 or q.device.type != "cpu"
            or head_dim % 8 or heads // kv_cache.shape[3] > MAX_GROUP or not kv_cache.is_contiguous()
            or not kernel_available()):
        return None
    return torch.ops.exaone_cpu_attention.paged_decode(q.contiguous(), kv_cache, block_tables.contiguous(),
                                                       mask.contiguous(), scale)
