"""Paged attention for prefill chunks and decodes in one Triton kernel, with split-K for long contexts.

Queries are a flat varlen batch (`query_start_loc`); keys and values come only from the paged cache
(this step's tokens were written there first). One program owns BLOCK_Q query tokens of one sequence
times the G query heads of one KV head (GQA packing: each K/V tile is loaded once per group). Sliding
layers read the ring layout (logical block j in table entry j % ring_blocks) and visit only the key
tiles that intersect the window of some query in the tile. Split-K ("flash-decoding") runs
NUM_SEGMENTS programs per query tile over disjoint key ranges into preallocated scratch, and a second
kernel merges their partial softmaxes. Twin: engine.attention.torch_backend.TorchAttentionBackend.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

LOG2E = math.log2(math.e)


@triton.jit
def _find_seq(query_start_loc, q_block, num_seqs, BLOCK_Q: tl.constexpr):
    """Sequence owning a global query tile: seq i's tiles start at query_start_loc[i] // BLOCK_Q + i."""
    lo = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        first = tl.load(query_start_loc + mid) // BLOCK_Q + mid
        if first <= q_block:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _paged_attention_kernel(
    out, q, k_cache, v_cache, block_tables, seq_lens, query_start_loc,
    seg_out, seg_max, seg_sum,
    scale, num_seqs, window, ring_blocks,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt,
    NUM_HEADS: tl.constexpr, GROUP: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr,
    TILE_N: tl.constexpr, NUM_SEGMENTS: tl.constexpr, SLIDING: tl.constexpr, RING: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    q_block = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1).to(tl.int64)
    segment = tl.program_id(2).to(tl.int64)
    seq = _find_seq(query_start_loc, q_block, num_seqs, BLOCK_Q)
    q_start = tl.load(query_start_loc + seq)
    q_len = tl.load(query_start_loc + seq + 1) - q_start
    local = q_block - (q_start // BLOCK_Q + seq)
    if local * BLOCK_Q >= q_len:
        return
    seq_len = tl.load(seq_lens + seq)
    context = seq_len - q_len  # position of the sequence's first query token

    rows = tl.arange(0, BLOCK_M)
    q_tok = local * BLOCK_Q + rows // GROUP
    head = kv_head * GROUP + rows % GROUP
    row_ok = (rows // GROUP < BLOCK_Q) & (q_tok < q_len)
    q_pos = context + q_tok
    dims = tl.arange(0, HEAD_DIM_P)
    dim_ok = dims < HEAD_DIM
    q_off = (q_start + q_tok)[:, None] * stride_qt + head[:, None] * stride_qh + dims[None, :]
    qt = tl.load(q + q_off, mask=row_ok[:, None] & dim_ok[None, :], other=0.0)

    # Keys this tile can see: [lo, hi). Sliding layers start at the first query's window.
    hi = tl.minimum(context + (local + 1) * BLOCK_Q, seq_len)
    lo = 0
    if SLIDING:
        lo = tl.maximum(context + local * BLOCK_Q - window + 1, 0)
    tile_lo = lo // TILE_N
    tile_hi = tl.cdiv(hi, TILE_N)
    if NUM_SEGMENTS > 1:
        per_segment = tl.cdiv(tile_hi - tile_lo, NUM_SEGMENTS)
        tile_lo = tile_lo + segment * per_segment
        tile_hi = tl.minimum(tile_lo + per_segment, tile_hi)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_P], tl.float32)
    cols = tl.arange(0, TILE_N)
    for tile in range(tile_lo, tile_hi):
        k_pos = tile * TILE_N + cols
        in_range = (k_pos >= lo) & (k_pos < hi)
        entry = k_pos // BLOCK_SIZE
        if RING:
            entry = entry % ring_blocks
        block = tl.load(block_tables + seq * stride_bt + entry, mask=in_range, other=-1)
        k_ok = in_range & (block >= 0)  # never read a slot no block holds
        block = tl.where(k_ok, block, 0)
        slot = k_pos % BLOCK_SIZE
        k_off = block * stride_kb + slot * stride_ks + kv_head * stride_kh
        kt = tl.load(k_cache + k_off[None, :] + dims[:, None], mask=k_ok[None, :] & dim_ok[:, None], other=0.0)
        # Scores in base 2 (scale carries log2(e)): exp2 is one instruction on the GPU, exp is a multiply and exp2.
        s = tl.dot(qt, kt, input_precision=DOT_PRECISION) * scale
        visible = row_ok[:, None] & k_ok[None, :] & (k_pos[None, :] <= q_pos[:, None])
        if SLIDING:
            visible = visible & (k_pos[None, :] > q_pos[:, None] - window)
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # fully masked rows stay finite
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v_off = block * stride_vb + slot * stride_vs + kv_head * stride_vh
        vt = tl.load(v_cache + v_off[:, None] + dims[None, :], mask=k_ok[:, None] & dim_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt, input_precision=DOT_PRECISION)
        m_i = m_new

    acc = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    store_ok = row_ok[:, None] & dim_ok[None, :]
    tok = q_start + q_tok
    if NUM_SEGMENTS == 1:
        o_off = tok[:, None] * stride_ot + head[:, None] * stride_oh + dims[None, :]
        tl.store(out + o_off, acc.to(out.dtype.element_ty), mask=store_ok)
    else:
        stat = (tok * NUM_HEADS + head) * NUM_SEGMENTS + segment
        tl.store(seg_out + stat[:, None] * HEAD_DIM_P + dims[None, :], acc, mask=store_ok)
        tl.store(seg_max + stat, m_i, mask=row_ok)
        tl.store(seg_sum + stat, l_i, mask=row_ok)


@triton.jit
def _merge_segments_kernel(out, seg_out, seg_max, seg_sum, stride_ot, stride_oh,
                           NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr,
                           NUM_SEGMENTS: tl.constexpr):
    tok = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    segs = tl.arange(0, NUM_SEGMENTS)
    dims = tl.arange(0, HEAD_DIM_P)
    stat = (tok * NUM_HEADS + head) * NUM_SEGMENTS + segs
    m = tl.load(seg_max + stat)
    m_all = tl.max(m, 0)
    m_all = tl.where(m_all == float("-inf"), 0.0, m_all)
    weight = tl.exp2(m - m_all) * tl.load(seg_sum + stat)  # segment maxima are base-2 scores
    parts = tl.load(seg_out + stat[:, None] * HEAD_DIM_P + dims[None, :])
    total = tl.sum(weight, 0)
    merged = tl.sum(parts * weight[:, None], 0) / tl.where(total == 0.0, 1.0, total)
    tl.store(out + tok * stride_ot + head * stride_oh + dims, merged.to(out.dtype.element_ty), mask=dims < HEAD_DIM)


def dot_input_precision(dtype: torch.dtype) -> str:
    """tl.dot's input precision: exact for fp32 (Triton defaults to TF32 on CUDA, ~1e-3 off), the default otherwise."""
    return "ieee" if dtype == torch.float32 else "tf32"


class SplitKScratch:
    """Preallocated partial results for split-K, so a captured CUDA graph never allocates."""

    def __init__(self, max_tokens: int, num_heads: int, head_dim: int, num_segments: int,
                 device: torch.device) -> None:
        dim = triton.next_power_of_2(head_dim)
        self.num_segments = num_segments
        self.out = torch.empty(max_tokens, num_heads, num_segments, dim, dtype=torch.float32, device=device)
        self.max = torch.empty(max_tokens, num_heads, num_segments, dtype=torch.float32, device=device)
        self.sum = torch.empty_like(self.max)


def paged_attention(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor, seq_lens: torch.Tensor,
                    query_start_loc: torch.Tensor, scale: float, window: int | None = None,
                    ring_blocks: int | None = None, out: torch.Tensor | None = None,
                    scratch: SplitKScratch | None = None, max_query_len: int | None = None,
                    tile_n: int = 32, num_warps: int = 4) -> torch.Tensor:
    """Causal attention of q [num_tokens, heads, dim] over kv_cache [2, blocks, block_size, kv_heads, dim].

    seq_lens count this step's tokens (already in the cache); scratch turns on split-K (one program per
    segment of each query tile), for decode batches with long contexts. max_query_len (host int, 1 for
    decode-only batches) picks a smaller query tile; tile_n and num_warps are the key tile and warps per program.
    """
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads, block_size = kv_cache.shape[3], kv_cache.shape[2]
    out = torch.empty_like(q) if out is None else out
    num_seqs = seq_lens.shape[0]
    if num_tokens == 0 or num_seqs == 0:
        return out
    group = num_heads // num_kv_heads
    block_m = max(16, triton.next_power_of_2(group))
    if max_query_len != 1:
        block_m = max(block_m, 64)
    block_q = block_m // group
    segments = scratch.num_segments if scratch is not None else 1
    if scratch is not None and num_tokens > scratch.out.shape[0]:
        raise ValueError(f"split-K scratch holds {scratch.out.shape[0]} tokens, the batch has {num_tokens}")
    grid = (num_tokens // block_q + num_seqs, num_kv_heads, segments)
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    partials = (out, out, out) if scratch is None else (scratch.out, scratch.max, scratch.sum)
    _paged_attention_kernel[grid](
        out, q, k_cache, v_cache, block_tables, seq_lens, query_start_loc, *partials, scale * LOG2E, num_seqs, window or 0, ring_blocks or 0,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
        NUM_HEADS=num_heads, GROUP=group, BLOCK_SIZE=block_size, HEAD_DIM=head_dim,
        HEAD_DIM_P=triton.next_power_of_2(head_dim), BLOCK_M=block_m, BLOCK_Q=block_q, TILE_N=tile_n,
        NUM_SEGMENTS=segments, SLIDING=window is not None, RING=ring_blocks is not None,
        DOT_PRECISION=dot_input_precision(q.dtype), num_warps=num_warps,
    )
    if scratch is not None:
        _merge_segments_kernel[(num_tokens, num_heads)](
            out, scratch.out, scratch.max, scratch.sum, out.stride(0), out.stride(1),
            NUM_HEADS=num_heads, HEAD_DIM=head_dim, HEAD_DIM_P=triton.next_power_of_2(head_dim),
            NUM_SEGMENTS=segments,
        )
    return out
