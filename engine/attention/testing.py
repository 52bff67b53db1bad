"""Random paged and ring KV batches for kernel tests and the GPU check; slots nobody wrote hold NaN."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from engine.attention.backend import AttentionMetadata, KVLayout
from engine.attention.torch_backend import TorchAttentionBackend
from engine.kv.kv_cache import ring_size
from exaone_kernels.attention import SplitKScratch, paged_attention
from exaone_kernels.cache import write_kv_cache


@dataclass
class PagedCase:
    """One step's batch over one pool: q/k/v of the new tokens, a poisoned cache holding the history."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    kv_cache: torch.Tensor  # NaN wherever no token was written
    layout: KVLayout
    meta: AttentionMetadata
    window: int | None

    def finite_cache(self) -> torch.Tensor:
        """The same cache with NaN replaced by finite garbage: what the torch twin may gather and mask."""
        return torch.nan_to_num(self.kv_cache, nan=7.0)

    def to(self, dtype: torch.dtype) -> PagedCase:
        """The same batch in another dtype (e.g. an fp32 reference for a bf16 run)."""
        return PagedCase(self.q.to(dtype), self.k.to(dtype), self.v.to(dtype), self.kv_cache.to(dtype),
                         self.layout, self.meta, self.window)


def make_case(contexts: list[int], q_lens: list[int], num_heads: int, num_kv_heads: int, head_dim: int,
              window: int | None = None, block_size: int = 4, max_chunk: int = 16, seed: int = 0,
              dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> PagedCase:
    """Sequences with contexts[i] cached tokens and q_lens[i] new ones (decodes must come first).

    Global pools get one random block per logical block; sliding pools a ring of
    ring_size(window, block_size, max_chunk) entries holding only the blocks the window still needs.
    Built on the CPU in fp32, then moved to device and dtype.
    """
    g = torch.Generator().manual_seed(seed)
    ring = None if window is None else ring_size(window, block_size, max_chunk)
    seq_lens = [c + n for c, n in zip(contexts, q_lens, strict=True)]
    needed = []  # logical blocks [lo, hi) each sequence holds
    for c, n in zip(contexts, seq_lens, strict=True):
        lo = 0 if window is None else max(0, c - window + 1) // block_size
        needed.append((lo, math.ceil(n / block_size)))
    num_blocks = sum(hi - lo for lo, hi in needed) + 3
    perm = torch.randperm(num_blocks, generator=g).tolist()
    width = max([ring or 0] + [hi for _, hi in needed] + [1])
    tables = torch.full((len(contexts), width), -1, dtype=torch.int64)
    cache = torch.full((2, num_blocks, block_size, num_kv_heads, head_dim), float("nan"))
    for i, (lo, hi) in enumerate(needed):
        for j in range(lo, hi):
            tables[i, j if ring is None else j % ring] = perm.pop()
    # History written by earlier steps: every held slot below the context (even below the window).
    for i, (lo, _) in enumerate(needed):
        for pos in range(lo * block_size, contexts[i]):
            block = tables[i, pos // block_size if ring is None else (pos // block_size) % ring]
            cache[:, block, pos % block_size] = torch.randn(2, num_kv_heads, head_dim, generator=g)
    num_tokens = sum(q_lens)
    positions = torch.cat([torch.arange(c, c + n) for c, n in zip(contexts, q_lens, strict=True)] or
                          [torch.zeros(0, dtype=torch.int64)])
    seq_idx = torch.repeat_interleave(torch.arange(len(q_lens)), torch.tensor(q_lens, dtype=torch.int64))
    entry = positions // block_size if ring is None else (positions // block_size) % ring
    slots = tables[seq_idx, entry] * block_size + positions % block_size
    cu = torch.zeros(len(q_lens) + 1, dtype=torch.int64)
    cu[1:] = torch.cumsum(torch.tensor(q_lens, dtype=torch.int64), 0)
    layout = KVLayout(tables.to(device), slots.to(device), ring)
    meta = AttentionMetadata(
        query_start_loc=cu.to(device), seq_lens=torch.tensor(seq_lens, dtype=torch.int64, device=device),
        positions=positions.to(device), layouts={"pool": layout}, num_decodes=sum(1 for n in q_lens if n == 1),
        query_start_loc_host=cu.tolist(), seq_lens_host=seq_lens,
    )
    q, k, v = (torch.randn(num_tokens, heads, head_dim, generator=g).to(device, dtype)
               for heads in (num_heads, num_kv_heads, num_kv_heads))
    return PagedCase(q, k, v, cache.to(device, dtype), layout, meta, window)


def run_triton(case: PagedCase, scale: float, segments: int = 0, tile_n: int = 32) -> torch.Tensor:
    """Cache write then attention with the Triton kernels, into a NaN-poisoned output; segments > 0: split-K."""
    cache = case.kv_cache.clone()
    write_kv_cache(case.k, case.v, cache, case.layout.slot_mapping)
    out = torch.full_like(case.q, float("nan"))
    num_heads, head_dim = case.q.shape[1:]
    scratch = SplitKScratch(case.q.shape[0], num_heads, head_dim, segments, case.q.device) if segments else None
    decode_only = case.meta.num_decodes == len(case.meta.seq_lens_host)
    return paged_attention(case.q, cache, case.layout.block_tables, case.meta.seq_lens, case.meta.query_start_loc,
                           scale, case.window, case.layout.ring_blocks, out=out, scratch=scratch,
                           max_query_len=1 if decode_only else None, tile_n=tile_n)


def run_reference(case: PagedCase, scale: float) -> torch.Tensor:
    """The torch backend (the kernel's twin) on the same batch, over a finite copy of the cache."""
    return TorchAttentionBackend().forward(case.q, case.k, case.v, case.finite_cache(), case.layout, case.window,
                                           case.meta, scale)
