"""Model runner: turns a scheduled batch into flat tensors and runs the model on them."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from engine.attention import AttentionMetadata, KVLayout
from engine.kv_cache import KVCacheManager
from engine.model import HybridTransformer
from engine.scheduler import ScheduledBatch


class ModelRunner:
    """Owns the KV cache tensors; builds positions, slot mappings and block tables for each step."""

    def __init__(self, model: HybridTransformer, kv: KVCacheManager, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.model, self.kv, self.device = model, kv, device
        cfg = model.cfg
        shape = (cfg.num_kv_heads, cfg.head_dim)
        self.caches: dict[str, torch.Tensor] = {
            kind: torch.zeros(spec.num_layers, 2, kv.pools[kind].num_blocks, kv.block_size, *shape,
                              dtype=dtype, device=device)
            for kind, spec in kv.specs.items()
        }
        counters = dict.fromkeys(self.caches, 0)
        self.layer_caches: list[torch.Tensor] = []
        for spec in cfg.layers:
            self.layer_caches.append(self.caches[spec.kv_kind][counters[spec.kv_kind]])
            counters[spec.kv_kind] += 1

    def copy_blocks(self, copies: list[tuple[str, int, int]]) -> None:
        """Copy whole blocks (all layers of a pool), e.g. the partial last block of a forked sample."""
        for kind, src, dst in copies:
            self.caches[kind][:, :, dst] = self.caches[kind][:, :, src]

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch, sample_rows: list[int],
                full_rows: Sequence[int] = ()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Run the batch: fp32 logits of the last token of each sequence in sample_rows, and of every
        token of each sequence in full_rows (prompt logprobs). Decode sequences must come first."""
        meta, input_ids = self.prepare(batch)
        hidden = self.model(input_ids, meta, self.layer_caches)
        last = meta.query_start_loc[1:] - 1
        logits = self.model.compute_logits(hidden[last[sample_rows]])
        starts = meta.query_start_loc_host
        full = {row: self.model.compute_logits(hidden[starts[row] : starts[row + 1]]) for row in full_rows}
        return logits, full

    def prepare(self, batch: ScheduledBatch) -> tuple[AttentionMetadata, torch.Tensor]:
        """Flat input ids and attention metadata for a batch, vectorised over tokens."""
        seqs, q_lens = batch.seqs, batch.num_new_tokens
        starts = [s.num_computed_tokens for s in seqs]
        input_ids = list(itertools.chain.from_iterable(
            s.token_ids[a : a + n] for s, a, n in zip(seqs, starts, q_lens, strict=True)))
        q_lens_t = torch.tensor(q_lens)
        cu = torch.zeros(len(seqs) + 1, dtype=torch.int64)
        torch.cumsum(q_lens_t, 0, out=cu[1:])
        seq_idx = torch.repeat_interleave(torch.arange(len(seqs)), q_lens_t)
        starts_t = torch.tensor(starts)
        positions = torch.arange(int(cu[-1])) - cu[:-1][seq_idx] + starts_t[seq_idx]
        seq_lens = starts_t + q_lens_t
        bs = self.kv.block_size
        layouts = {}
        for kind in self.kv.specs:
            tables = [s.block_tables[kind].table for s in seqs]
            width = max(len(t) for t in tables)
            table_t = torch.tensor([t + [-1] * (width - len(t)) for t in tables], dtype=torch.int64)
            ring = self.kv.ring_blocks.get(kind)
            entry = positions // bs if ring is None else (positions // bs) % ring
            slots = table_t[seq_idx, entry] * bs + positions % bs
            layouts[kind] = KVLayout(table_t.to(self.device), slots.to(self.device), ring)
        num_decodes = sum(1 for n in q_lens if n == 1)
        meta = AttentionMetadata(
            query_start_loc=cu.to(self.device), seq_lens=seq_lens.to(self.device),
            positions=positions.to(self.device), layouts=layouts, num_decodes=num_decodes,
            query_start_loc_host=cu.tolist(), seq_lens_host=seq_lens.tolist(),
        )
        return meta, torch.tensor(input_ids, dtype=torch.int64, device=self.device)
