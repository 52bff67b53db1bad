"""Torch twins of the Triton kernels: the CPU path runs these, and the kernel tests compare against them.

The attention kernel's twin is engine.attention.torch_backend.TorchAttentionBackend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def write_kv_cache(k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Store each token's K/V at its flat slot (block * block_size + offset); slots < 0 are padding."""
    keep = slot_mapping >= 0
    if not bool(keep.all()):
        k, v, slot_mapping = k[keep], v[keep], slot_mapping[keep]
    num_kv_heads, head_dim = kv_cache.shape[3], kv_cache.shape[4]
    kv_cache[0].view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, k)
    kv_cache[1].view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, v)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None) -> torch.Tensor:
    """RMSNorm over the last dim in fp32 (cast back before the weight, as transformers does), plus residual."""
    y = F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype) * weight
    return y if residual is None else residual + y


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate [num_tokens, heads, head_dim] by per-token angles (rotate-half convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def qk_norm_rope(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor | None, k_weight: torch.Tensor | None,
                 eps: float, cos: torch.Tensor | None, sin: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head RMSNorm of q and k (when weights are given), then RoPE (when cos/sin [tokens, 1, dim] are)."""
    if q_weight is not None:
        q, k = rms_norm(q, q_weight, eps), rms_norm(k, k_weight, eps)
    if cos is not None:  # q and k rotated together: half the small ops of a decode step's RoPE
        qk = apply_rope(torch.cat([q, k], dim=1), cos, sin)
        q, k = qk.split([q.shape[1], k.shape[1]], dim=1)
    return q, k


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """SwiGLU on a fused [tokens, 2 * intermediate] gate/up projection."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up
