"""The attention backend interface: what a backend is given per step (metadata, KV layouts) and must do."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch

from exaone_kernels import reference


@dataclass
class KVLayout:
    """Where one KV pool's tokens live for this step's batch (one per layer kind)."""

    block_tables: torch.Tensor  # [num_seqs, blocks_per_seq] int64; -1 where no block is held
    slot_mapping: torch.Tensor  # [num_tokens] int64: cache slot for each new token's K/V
    ring_blocks: int | None  # sliding pools: logical block j lives in table entry j % ring_blocks


@dataclass
class AttentionMetadata:
    """The flat batch as attention sees it; sequences with one query token (decodes) come first."""

    query_start_loc: torch.Tensor  # [num_seqs + 1] (cu_seqlens_q)
    seq_lens: torch.Tensor  # [num_seqs] context length including this step's tokens
    positions: torch.Tensor  # [num_tokens]
    layouts: dict[str, KVLayout]  # "global" / "sliding"
    num_decodes: int
    # Host copies, so that the per-layer prefill loop never waits on the device.
    query_start_loc_host: list[int]
    seq_lens_host: list[int]
    # Per-step values a backend derives once and reuses in every layer (e.g. decode masks).
    scratch: dict[Any, Any] = field(default_factory=dict)


class AttentionBackend(ABC):
    """Writes a layer's new K/V into its cache and attends over what the cache holds.

    A backend also brings the fused small ops the model runs around attention; by default their
    torch twins (exaone_kernels.reference), which are what the CPU path runs.
    """

    rms_norm = staticmethod(reference.rms_norm)
    qk_norm_rope = staticmethod(reference.qk_norm_rope)
    silu_and_mul = staticmethod(reference.silu_and_mul)

    @abstractmethod
    def forward(
        self,
        q: torch.Tensor,  # [num_tokens, num_heads, head_dim]
        k: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        v: torch.Tensor,
        kv_cache: torch.Tensor,  # [2, num_blocks, block_size, num_kv_heads, head_dim]
        layout: KVLayout,
        window: int | None,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        """Returns the attention output, [num_tokens, num_heads, head_dim]."""
