"""Weight-only FP8 GEMM with 2-D block scales (Hugging Face's `weight_block_size`, e.g. [128, 128]): y = x W^T
with W = w * scale[n // bn, k // bk], the e4m3 weight widened and scaled inside the K loop.

It serves block-scaled FP8 checkpoints on CUDA, which torch._scaled_mm's row/tensor scales cannot: the weight
stays 8-bit in memory (half of bf16's bytes per decode step), activations stay 16-bit. w is [N, K] as stored,
scales fp32 [ceil(N / bn), ceil(K / bk)]; the torch twin is `fp8_block_reference`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from exaone_kernels.attention import dot_input_precision
from exaone_kernels.gemm_tiles import BLOCK_N, store_tile, tile_rows_cols, tiles

BLOCK_K = 32  # scale blocks must span a multiple of it along K, so one K tile reads one scale per column


def fp8_block_reference(x: torch.Tensor, w: torch.Tensor, scales: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """The twin: x [M, K] times the dequantized W^T, in fp32, returned in x's dtype."""
    n, k = w.shape
    full = scales.repeat_interleave(block[0], 0)[:n].repeat_interleave(block[1], 1)[:, :k]
    return (x.float() @ (w.float() * full).T).to(x.dtype)


@triton.jit
def _fp8_block_kernel(out, x, w, scales, M, N, K, stride_xm, stride_om, stride_s,
                      SCALE_N: tl.constexpr, SCALE_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    rows, cols = tile_rows_cols(BLOCK_M, BLOCK_N)
    row_ok, col_ok = rows < M, cols < N
    ks = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + ks
        k_ok = kk < K
        a = tl.load(x + rows[:, None] * stride_xm + kk[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        wt = tl.load(w + cols[None, :] * K + kk[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        s = tl.load(scales + (cols // SCALE_N) * stride_s + k0 // SCALE_K, mask=col_ok, other=0.0)
        acc += tl.dot(a, (wt.to(tl.float32) * s[None, :]).to(a.dtype), input_precision=PRECISION)
    store_tile(out, acc, rows, cols, M, N, stride_om)


def fp8_block_matmul(x: torch.Tensor, w: torch.Tensor, scales: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """x [M, K] (unit last stride) times W^T for w float8_e4m3fn [N, K] (contiguous) with block scales."""
    m, k = x.shape
    n = w.shape[0]
    if block[1] % BLOCK_K:
        raise ValueError(f"FP8 scale blocks must span a multiple of {BLOCK_K} input columns, got {block[1]}")
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    block_m, grid = tiles(m, n)
    _fp8_block_kernel[grid](out, x, w, scales, m, n, k, x.stride(0), out.stride(0), scales.stride(0),
                            SCALE_N=block[0], SCALE_K=block[1], BLOCK_M=block_m, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
                            PRECISION=dot_input_precision(x.dtype))
    return out
