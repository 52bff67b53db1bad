"""What the weight-only GEMMs (w4a16, fp8_block) share: the output tile a program owns, its store, the grid."""

from __future__ import annotations

import triton
import triton.language as tl

BLOCK_N = 64


@triton.jit
def tile_rows_cols(BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's output rows and columns (int64, so row * stride cannot wrap)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    return rows, cols


@triton.jit
def store_tile(out, acc, rows, cols, M, N, stride_om):
    """Write the fp32 accumulator tile in out's dtype, inside [M, N]."""
    tl.store(out + rows[:, None] * stride_om + cols[None, :], acc.to(out.dtype.element_ty),
             mask=(rows < M)[:, None] & (cols < N)[None, :])


def tiles(m: int, n: int) -> tuple[int, tuple[int, int]]:
    """(BLOCK_M, grid) for an [m, n] output: decode rows fill one 16-row tile (tl.dot's least), prefill 64."""
    block_m = 16 if m <= 16 else 64
    return block_m, (triton.cdiv(m, block_m), triton.cdiv(n, BLOCK_N))
