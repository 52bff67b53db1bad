"""W4A16 GEMM for AWQ/GPTQ weights: y = x W^T with W's 4-bit codes dequantized inside the K loop.

Layout (ours, not a checkpoint's: engine.model.quant_gpu repacks the loaded QuantizedWeight once):
qweight int32 [K/8, N], word (r, n) holding codes of input columns 8r..8r+7 of output n in nibbles 0..7
(GPTQ's order: a tile of K rows reads whole words, and N is the contiguous axis, so loads coalesce);
scales and offsets fp32 [K/group, N], W^T[k, n] = code * scale[k // group, n] + offset[k // group, n]
(offset = -zero * scale). The torch twin is `w4a16_reference`; both accumulate in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from exaone_kernels.attention import dot_input_precision
from exaone_kernels.gemm_tiles import BLOCK_N, store_tile, tile_rows_cols, tiles

BLOCK_K = 32  # groups must be multiples of it, so one K tile reads one row of scales


def pack_w4(codes_nk: torch.Tensor) -> torch.Tensor:
    """[N, K] codes 0..15 -> qweight int32 [K/8, N] in this kernel's layout."""
    if codes_nk.min() < 0 or codes_nk.max() > 15:
        raise ValueError("W4A16 codes must lie in 0..15")
    rows = codes_nk.T.to(torch.int64).reshape(-1, 8, codes_nk.shape[0])
    words = sum(rows[:, i] << (4 * i) for i in range(8)) & 0xFFFFFFFF
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32).contiguous()


def unpack_w4(qweight: torch.Tensor) -> torch.Tensor:
    """qweight [K/8, N] -> codes [K, N] (int32)."""
    shifts = torch.arange(8, device=qweight.device, dtype=torch.int32)[None, :, None] * 4
    return ((qweight[:, None, :] >> shifts) & 0xF).reshape(-1, qweight.shape[1])


def w4a16_reference(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """The twin: x [M, K] times the dequantized W^T [K, N], in fp32, returned in x's dtype."""
    group = qweight.shape[0] * 8 // scales.shape[0]
    w = unpack_w4(qweight).float() * scales.repeat_interleave(group, 0) + offsets.repeat_interleave(group, 0)
    return (x.float() @ w).to(x.dtype)


@triton.jit
def _w4a16_kernel(out, x, qweight, scales, offsets, M, N, K, stride_xm, stride_om,
                  GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  PRECISION: tl.constexpr):
    rows, cols = tile_rows_cols(BLOCK_M, BLOCK_N)
    row_ok, col_ok = rows < M, cols < N
    ks = tl.arange(0, BLOCK_K)
    shifts = (ks % 8) * 4
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + ks
        a = tl.load(x + rows[:, None] * stride_xm + kk[None, :], mask=row_ok[:, None], other=0.0)
        words = tl.load(qweight + (kk // 8)[:, None].to(tl.int64) * N + cols[None, :], mask=col_ok[None, :], other=0)
        codes = (words >> shifts[:, None]) & 0xF
        g = k0 // GROUP
        s = tl.load(scales + g * N + cols, mask=col_ok, other=0.0)
        o = tl.load(offsets + g * N + cols, mask=col_ok, other=0.0)
        w = codes.to(tl.float32) * s[None, :] + o[None, :]
        acc += tl.dot(a, w.to(a.dtype), input_precision=PRECISION)
    store_tile(out, acc, rows, cols, M, N, stride_om)


def w4a16_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """x [M, K] (unit last stride) times the 4-bit W^T [K, N]: [M, N] in x's dtype."""
    m, k = x.shape
    n = qweight.shape[1]
    group = k // scales.shape[0]
    if k != qweight.shape[0] * 8 or group % BLOCK_K:
        raise ValueError(f"W4A16 needs K = 8 * qweight rows and groups of a multiple of {BLOCK_K} (K {k}, group {group})")
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    block_m, grid = tiles(m, n)
    _w4a16_kernel[grid](out, x, qweight, scales, offsets, m, n, k, x.stride(0), out.stride(0), GROUP=group,
                        BLOCK_M=block_m, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, PRECISION=dot_input_precision(x.dtype))
    return out
