"""The torch attention backend: the reference and CPU path (gather + SDPA, or an in-place paged decode)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.attention import cpu_decode
from engine.attention.backend import AttentionBackend, AttentionMetadata, KVLayout
from engine.attention.paged_decode import InPlaceDecode
from exaone_kernels import reference


def key_positions(block_tables: torch.Tensor, seq_lens: torch.Tensor, block_size: int,
                  ring_blocks: int | None) -> torch.Tensor:
    """Token position held by each cache slot a block table addresses: [num_seqs, blocks * block_size].

    In a ring, entry e holds the newest logical block j <= the last one with j % ring_blocks == e;
    slots never written or already recycled get positions that the causal/window mask excludes.
    """
    num_seqs, width = block_tables.shape
    entry = torch.arange(width, device=block_tables.device)
    if ring_blocks is None:
        logical = entry.expand(num_seqs, width)
    else:
        last = ((seq_lens - 1) // block_size)[:, None]
        logical = last - torch.remainder(last - entry[None, :], ring_blocks)
    offsets = torch.arange(block_size, device=block_tables.device)
    pos = (logical[:, :, None] * block_size + offsets).reshape(num_seqs, width * block_size)
    held = (block_tables >= 0)[:, :, None].expand(num_seqs, width, block_size).reshape(num_seqs, -1)
    return torch.where(held, pos, torch.full_like(pos, -1))


def attention_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """Boolean [num_seqs, 1, q_len, k_len]: causal, inside the window, slot holds a token."""
    q = q_pos[:, :, None]
    k = k_pos[:, None, :]
    mask = (k <= q) & (k >= 0)
    if window is not None:
        mask &= k > q - window
    return mask[:, None]


class TorchAttentionBackend(AttentionBackend):
    """Backend in torch ops: decodes batched together, each prefill chunk on its own.

    Attention gathers the blocks it reads into a dense copy for SDPA, except decodes on the CPU: in fp32 on
    an AVX2 CPU they read the paged cache in place in C++ (engine.attention.cpu_decode); elsewhere a batch of
    decodes over enough context does so through an inductor-compiled loop
    (engine.attention.paged_decode.InPlaceDecode), which the model runner compiles at start-up.
    """

    # Below this many token slots in the decode batch's block tables (batch x padded width), or for a lone
    # sequence (the compiled loop runs one sequence per thread), the gather was as fast in some runs and
    # faster in others: `benchmarks/decode_attention.py`.
    COMPILED_DECODE_MIN_TOKENS = 8192

    def __init__(self) -> None:
        # The C++ decode, where the model runner found at start-up that it serves this model (cpu_decode.serves):
        # 16 streams at 500 tokens of context 90 instead of 112-131 ms a step (`benchmarks/decode_attention.py`)
        self.cpu_kernel = False
        self.in_place_decode = InPlaceDecode()  # used once the model runner has compiled it (CPU)

    def forward(self, q, k, v, kv_cache, layout, window, meta, scale):
        self._write(k, v, kv_cache, layout, meta)
        nd, num_seqs = meta.num_decodes, len(meta.seq_lens_host)
        g = q.shape[1] // k.shape[1]
        masks = self._step_masks(meta, layout, window, kv_cache.shape[2], g)
        if nd == num_seqs:  # an all-decode step (the common one): no output buffer to fill
            return self._decode(q, kv_cache, layout, masks[0], scale, meta)
        out = torch.empty_like(q)
        if nd:
            out[:nd] = self._decode(q[:nd], kv_cache, layout, masks[0], scale, meta)
        starts = meta.query_start_loc_host
        for i in range(nd, num_seqs):
            a, b = starts[i], starts[i + 1]
            if meta.seq_lens_host[i] == b - a:
                # No history: attend over the fresh chunk directly, no cache gather.
                out[a:b] = _sdpa(q[None, a:b], k[None, a:b], v[None, a:b], masks[i - nd + 1], scale)[0]
            else:
                blocks = self._step_blocks(meta, layout, i, i + 1, kv_cache.shape[1])
                out[a:b] = self._paged(q[None, a:b], kv_cache, blocks, masks[i - nd + 1], scale, meta)[0]
        return out

    def _decode(self, q: torch.Tensor, kv_cache: torch.Tensor, layout: KVLayout, mask: torch.Tensor, scale: float,
                meta: AttentionMetadata) -> torch.Tensor:
        """Attention of the step's first q.shape[0] sequences, one query token each."""
        nd = q.shape[0]
        if self.cpu_kernel:
            return cpu_decode.cpu_paged_decode(q, kv_cache, self._step_tables(meta, layout, 0, nd), mask, scale)
        if self.in_place_decode.ready and nd > 1 and mask.shape[-1] * nd >= self.COMPILED_DECODE_MIN_TOKENS:
            out = self.in_place_decode(q, kv_cache, self._step_tables(meta, layout, 0, nd), mask, scale)
            if out is not None:
                return out
        blocks = self._step_blocks(meta, layout, 0, nd, kv_cache.shape[1])
        return self._paged(q[:, None], kv_cache, blocks, mask, scale, meta)[:, 0]

    @staticmethod
    def _write(k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, layout: KVLayout,
               meta: AttentionMetadata) -> None:
        """The layer's new K/V into its cache; whether any slot is padding is checked once per step."""
        key = ("padded", id(layout))
        if key not in meta.scratch:
            meta.scratch[key] = not bool((layout.slot_mapping >= 0).all())
        if meta.scratch[key]:
            reference.write_kv_cache(k, v, kv_cache, layout.slot_mapping)
            return
        flat = kv_cache.view(2, -1, *kv_cache.shape[3:])
        flat[0].index_copy_(0, layout.slot_mapping, k)
        flat[1].index_copy_(0, layout.slot_mapping, v)

    @staticmethod
    def _step_tables(meta: AttentionMetadata, layout: KVLayout, first: int, end: int) -> torch.Tensor:
        """Block tables of sequences [first, end) with -1 entries clamped to a valid block (the masks exclude
        them); built once per step and pool, shared by its layers."""
        key = ("tables", id(layout), first, end)
        if key not in meta.scratch:
            meta.scratch[key] = layout.block_tables[first:end].clamp(min=0)
        return meta.scratch[key]

    @classmethod
    def _step_blocks(cls, meta: AttentionMetadata, layout: KVLayout, first: int, end: int,
                     num_blocks: int) -> tuple[torch.Tensor, int]:
        """(rows of the [2 * num_blocks] K-then-V block axis to gather, table width) for sequences
        [first, end); built once per step and pool, shared by its layers."""
        key = ("blocks", id(layout), first, end)
        if key not in meta.scratch:
            tables = cls._step_tables(meta, layout, first, end).flatten()
            meta.scratch[key] = torch.cat([tables, tables + num_blocks]), layout.block_tables.shape[1]
        return meta.scratch[key]

    @staticmethod
    def _step_masks(meta: AttentionMetadata, layout: KVLayout, window: int | None,
                    block_size: int, group: int) -> list[torch.Tensor | None]:
        """[decode mask, one mask per prefill chunk], built once per step and pool, shared by its layers,
        already expanded over the `group` query heads of a KV head (see _sdpa)."""
        key = (id(layout), window)
        if key in meta.scratch:
            return meta.scratch[key]
        nd = meta.num_decodes
        masks: list[torch.Tensor | None] = [None]
        if nd:
            k_pos = key_positions(layout.block_tables[:nd], meta.seq_lens[:nd], block_size, layout.ring_blocks)
            masks[0] = _group_mask(attention_mask(meta.positions[:nd, None], k_pos, window), group)
        starts = meta.query_start_loc_host
        for i in range(nd, len(meta.seq_lens_host)):
            q_pos = meta.positions[None, starts[i] : starts[i + 1]]
            if meta.seq_lens_host[i] == starts[i + 1] - starts[i]:
                k_pos = q_pos
            else:
                k_pos = key_positions(layout.block_tables[i : i + 1], meta.seq_lens[i : i + 1], block_size,
                                      layout.ring_blocks)
            masks.append(_group_mask(attention_mask(q_pos, k_pos, window), group))
        meta.scratch[key] = masks
        return masks

    @staticmethod
    def _paged(q: torch.Tensor, kv_cache: torch.Tensor, blocks: tuple[torch.Tensor, int], mask: torch.Tensor,
               scale: float, meta: AttentionMetadata) -> torch.Tensor:
        """q: [num_seqs, q_len, heads, dim] against the cached keys and values `blocks` address."""
        rows, width = blocks
        num_seqs = q.shape[0]
        shape = (2, num_seqs, width * kv_cache.shape[2], *kv_cache.shape[3:])
        # Keys and values in one contiguous gather along the leading (K-then-V block) axis, into a buffer
        # the step's layers share: a fresh one per layer costs page faults that rival the copy itself.
        key = ("gathered", shape, kv_cache.dtype)
        if key not in meta.scratch:
            meta.scratch[key] = kv_cache.new_empty(shape)
        kv = meta.scratch[key]
        torch.index_select(kv_cache.flatten(0, 1), 0, rows, out=kv.view(-1, *kv_cache.shape[2:]))
        return _sdpa(q, kv[0], kv[1], mask, scale)


def _group_mask(mask: torch.Tensor, group: int) -> torch.Tensor:
    """[B, 1, Lq, Lk] -> [B, 1, G*Lq, Lk]: the mask of the query rows _sdpa stacks under one KV head."""
    if group == 1:
        return mask
    b, _, lq, lk = mask.shape
    return mask[:, :, None].expand(b, 1, group, lq, lk).reshape(b, 1, group * lq, lk)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """[B, Lq, H, D] x [B, Lk, Hkv, D] -> [B, Lq, H, D] with grouped-query attention.

    Query heads are grouped under their KV head ([B, Hkv, G*Lq, D]) so K and V are never repeated;
    `mask` comes grouped the same way ([B, 1, G*Lq, Lk], see _group_mask).
    """
    b, lq, h, d = q.shape
    hkv = k.shape[2]
    g = h // hkv
    q = q.view(b, lq, hkv, g, d).permute(0, 2, 3, 1, 4).reshape(b, hkv, g * lq, d)
    out = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=scale)
    return out.view(b, hkv, g, lq, d).permute(0, 3, 1, 2, 4).reshape(b, lq, h, d)
