"""Writes this step's K/V into the paged (or ring) cache at each token's slot; slot -1 (padding) is skipped."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _write_kv_kernel(k, v, k_cache, v_cache, slot_mapping, stride_kt, stride_kh, stride_vt, stride_vh,
                     stride_cb, stride_cs, stride_ch, stride_vcb, stride_vcs, stride_vch,
                     NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, HEADS_P: tl.constexpr,
                     HEAD_DIM_P: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    tok = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping + tok)
    if slot < 0:
        return
    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE
    heads = tl.arange(0, HEADS_P)[:, None]
    dims = tl.arange(0, HEAD_DIM_P)[None, :]
    ok = (heads < NUM_KV_HEADS) & (dims < HEAD_DIM)
    key = tl.load(k + tok * stride_kt + heads * stride_kh + dims, mask=ok)
    value = tl.load(v + tok * stride_vt + heads * stride_vh + dims, mask=ok)
    tl.store(k_cache + block * stride_cb + offset * stride_cs + heads * stride_ch + dims, key, mask=ok)
    tl.store(v_cache + block * stride_vcb + offset * stride_vcs + heads * stride_vch + dims, value, mask=ok)


def write_kv_cache(k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """k, v: [num_tokens, kv_heads, dim] (rows may be strided) into kv_cache [2, blocks, block_size, kv_heads, dim].

    Twin: exaone_kernels.reference.write_kv_cache.
    """
    num_tokens, num_kv_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    _write_kv_kernel[(num_tokens,)](
        k, v, k_cache, v_cache, slot_mapping, k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1),
        v_cache.stride(2), NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim,
        HEADS_P=triton.next_power_of_2(num_kv_heads), HEAD_DIM_P=triton.next_power_of_2(head_dim),
        BLOCK_SIZE=kv_cache.shape[2],
    )
