"""Fused elementwise kernels: RMSNorm (+ residual add), QK-norm + RoPE, SwiGLU. Twins: exaone_kernels.reference."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(out, x, weight, residual, eps, stride_x, stride_r, stride_o,
                     DIM: tl.constexpr, DIM_P: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, DIM_P)
    ok = cols < DIM
    xs = tl.load(x + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(xs * xs, 0) / DIM + eps)
    # Round to the activation dtype before the weight, as transformers does.
    y = (xs * rstd).to(out.dtype.element_ty).to(tl.float32) * tl.load(weight + cols, mask=ok).to(tl.float32)
    if HAS_RESIDUAL:
        y = y.to(out.dtype.element_ty).to(tl.float32)
        y += tl.load(residual + row * stride_r + cols, mask=ok).to(tl.float32)
    tl.store(out + row * stride_o + cols, y.to(out.dtype.element_ty), mask=ok)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None) -> torch.Tensor:
    """residual + RMSNorm(x) * weight (residual optional) for x [rows, dim] with unit last stride."""
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.shape[0] == 0:
        return out
    res = x if residual is None else residual
    dim = x.shape[-1]
    _rms_norm_kernel[(x.shape[0],)](out, x, weight, res, eps, x.stride(0), res.stride(0), out.stride(0),
                                    DIM=dim, DIM_P=triton.next_power_of_2(dim), HAS_RESIDUAL=residual is not None)
    return out


@triton.jit
def _norm_rope_heads(src, dst, weight, cos, sin, tok, eps, stride_t, stride_h, stride_cos,
                     HEADS: tl.constexpr, HEADS_P: tl.constexpr, HALF: tl.constexpr, HALF_P: tl.constexpr,
                     HAS_NORM: tl.constexpr, HAS_ROPE: tl.constexpr):
    heads = tl.arange(0, HEADS_P)[:, None]
    cols = tl.arange(0, HALF_P)[None, :]
    ok = (heads < HEADS) & (cols < HALF)
    base = src + tok * stride_t + heads * stride_h + cols
    x1 = tl.load(base, mask=ok, other=0.0).to(tl.float32)
    x2 = tl.load(base + HALF, mask=ok, other=0.0).to(tl.float32)
    if HAS_NORM:
        rstd = tl.rsqrt((tl.sum(x1 * x1, 1) + tl.sum(x2 * x2, 1)) / (2 * HALF) + eps)[:, None]
        x1 = (x1 * rstd).to(dst.dtype.element_ty).to(tl.float32) * tl.load(weight + cols, mask=cols < HALF)
        x2 = (x2 * rstd).to(dst.dtype.element_ty).to(tl.float32) * tl.load(weight + HALF + cols, mask=cols < HALF)
    if HAS_ROPE:
        c = cos + tok * stride_cos + cols
        s = sin + tok * stride_cos + cols
        cos1, cos2 = tl.load(c, mask=cols < HALF), tl.load(c + HALF, mask=cols < HALF)
        sin1, sin2 = tl.load(s, mask=cols < HALF), tl.load(s + HALF, mask=cols < HALF)
        rotated1 = x1 * cos1 - x2 * sin1
        x2 = x2 * cos2 + x1 * sin2
        x1 = rotated1
    out = dst + (tok * HEADS + heads) * (2 * HALF) + cols
    tl.store(out, x1.to(dst.dtype.element_ty), mask=ok)
    tl.store(out + HALF, x2.to(dst.dtype.element_ty), mask=ok)


@triton.jit
def _qk_norm_rope_kernel(q_out, k_out, q, k, q_weight, k_weight, cos, sin, eps,
                         stride_qt, stride_qh, stride_kt, stride_kh, stride_cos,
                         NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEADS_P: tl.constexpr,
                         KV_HEADS_P: tl.constexpr, HALF: tl.constexpr, HALF_P: tl.constexpr,
                         HAS_NORM: tl.constexpr, HAS_ROPE: tl.constexpr):
    tok = tl.program_id(0).to(tl.int64)
    _norm_rope_heads(q, q_out, q_weight, cos, sin, tok, eps, stride_qt, stride_qh, stride_cos,
                     NUM_HEADS, HEADS_P, HALF, HALF_P, HAS_NORM, HAS_ROPE)
    _norm_rope_heads(k, k_out, k_weight, cos, sin, tok, eps, stride_kt, stride_kh, stride_cos,
                     NUM_KV_HEADS, KV_HEADS_P, HALF, HALF_P, HAS_NORM, HAS_ROPE)


def qk_norm_rope(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor | None, k_weight: torch.Tensor | None,
                 eps: float, cos: torch.Tensor | None, sin: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Contiguous (q, k) after per-head RMSNorm (if weights) and RoPE (if cos/sin [tokens, 1, dim]), one launch."""
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    q_out, k_out = torch.empty(q.shape, dtype=q.dtype, device=q.device), torch.empty(k.shape, dtype=k.dtype,
                                                                                      device=k.device)
    if num_tokens == 0:
        return q_out, k_out
    half = head_dim // 2
    _qk_norm_rope_kernel[(num_tokens,)](
        q_out, k_out, q, k, q if q_weight is None else q_weight, k if k_weight is None else k_weight,
        q if cos is None else cos, q if sin is None else sin, eps,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), 0 if cos is None else cos.stride(0),
        NUM_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads, HEADS_P=triton.next_power_of_2(num_heads),
        KV_HEADS_P=triton.next_power_of_2(num_kv_heads), HALF=half, HALF_P=triton.next_power_of_2(half),
        HAS_NORM=q_weight is not None, HAS_ROPE=cos is not None,
    )
    return q_out, k_out


@triton.jit
def _silu_and_mul_kernel(out, x, stride_x, stride_o, DIM: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < DIM
    gate = tl.load(x + row * stride_x + cols, mask=ok).to(tl.float32)
    up = tl.load(x + row * stride_x + DIM + cols, mask=ok).to(tl.float32)
    # Round silu(gate) to the activation dtype before the product, as the torch twin does.
    act = (gate * tl.sigmoid(gate)).to(out.dtype.element_ty).to(tl.float32)
    tl.store(out + row * stride_o + cols, (act * up).to(out.dtype.element_ty), mask=ok)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for x = [gate | up] of shape [rows, 2 * dim]."""
    rows, dim = x.shape[0], x.shape[1] // 2
    out = torch.empty(rows, dim, dtype=x.dtype, device=x.device)
    if rows == 0:
        return out
    block = min(1024, triton.next_power_of_2(dim))
    _silu_and_mul_kernel[(rows, triton.cdiv(dim, block))](out, x, x.stride(0), out.stride(0), DIM=dim, BLOCK=block)
    return out
