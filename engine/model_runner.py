"""Model runner: turns a scheduled batch into flat tensors and runs the model on them."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from engine.attention import AttentionMetadata, KVLayout
from engine.kv_cache import KVCacheManager
from engine.model import HybridTransformer
from engine.scheduler import ScheduledBatch

if TYPE_CHECKING:
    from engine.parallel.channel import StepChannel


@dataclass
class StepInputs:
    """One step's flat host tensors: all a rank needs to run the model (tensor-parallel workers get these)."""

    input_ids: torch.Tensor  # [num_tokens]
    positions: torch.Tensor  # [num_tokens]
    query_start_loc: torch.Tensor  # [num_seqs + 1]
    seq_lens: torch.Tensor  # [num_seqs]
    block_tables: dict[str, torch.Tensor]  # per pool: [num_seqs, width], -1 where no block is held
    slot_mapping: dict[str, torch.Tensor]  # per pool: [num_tokens]
    num_decodes: int
    sample_rows: list[int] = field(default_factory=list)  # sequences whose last token is sampled
    full_rows: list[int] = field(default_factory=list)  # sequences that want every token's logits


class ModelRunner:
    """Owns the KV cache tensors; builds positions, slot mappings and block tables for each step."""

    def __init__(self, model: HybridTransformer, kv: KVCacheManager, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.model, self.kv, self.device = model, kv, device
        self.channel: StepChannel | None = None  # set on rank 0 of a tensor-parallel group
        attn = model.model.layers[0].self_attn
        shape = (attn.num_kv_heads, attn.head_dim)  # this rank's KV heads
        self.caches: dict[str, torch.Tensor] = {
            kind: torch.zeros(spec.num_layers, 2, kv.pools[kind].num_blocks, kv.block_size, *shape,
                              dtype=dtype, device=device)
            for kind, spec in kv.specs.items()
        }
        counters = dict.fromkeys(self.caches, 0)
        self.layer_caches: list[torch.Tensor] = []
        for spec in model.cfg.layers:
            self.layer_caches.append(self.caches[spec.kv_kind][counters[spec.kv_kind]])
            counters[spec.kv_kind] += 1

    def copy_blocks(self, copies: list[tuple[str, int, int]]) -> None:
        """Copy whole blocks (all layers of a pool), e.g. the partial last block of a forked sample."""
        if self.channel is not None:
            self.channel.send_copies(copies)
        for kind, src, dst in copies:
            self.caches[kind][:, :, dst] = self.caches[kind][:, :, src]

    def execute(self, batch: ScheduledBatch, sample_rows: list[int],
                full_rows: Sequence[int] = ()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Run the batch: fp32 logits of the last token of each sequence in sample_rows, and of every
        token of each sequence in full_rows (prompt logprobs). Decode sequences must come first."""
        inputs = self.prepare(batch, sample_rows, full_rows)
        if self.channel is not None:
            self.channel.send_step(inputs)
        return self.run(inputs)

    @torch.inference_mode()
    def run(self, inputs: StepInputs) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """The model on one step's inputs; every rank runs this (logits are None off rank 0)."""
        meta = self.metadata(inputs)
        hidden = self.model(inputs.input_ids.to(self.device), meta, self.layer_caches)
        last = meta.query_start_loc[1:] - 1
        logits = self.model.compute_logits(hidden[last[inputs.sample_rows]])
        starts = meta.query_start_loc_host
        full = {row: self.model.compute_logits(hidden[starts[row] : starts[row + 1]]) for row in inputs.full_rows}
        return logits, full

    def prepare(self, batch: ScheduledBatch, sample_rows: Sequence[int] = (),
                full_rows: Sequence[int] = ()) -> StepInputs:
        """Flat input ids, positions and per-pool slot mappings and block tables, vectorised over tokens."""
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
        bs = self.kv.block_size
        tables, slots = {}, {}
        for kind in self.kv.specs:
            kind_tables = [s.block_tables[kind].table for s in seqs]
            width = max(len(t) for t in kind_tables)
            tables[kind] = table_t = torch.tensor([t + [-1] * (width - len(t)) for t in kind_tables],
                                                  dtype=torch.int64)
            ring = self.kv.ring_blocks.get(kind)
            entry = positions // bs if ring is None else (positions // bs) % ring
            slots[kind] = table_t[seq_idx, entry] * bs + positions % bs
        return StepInputs(torch.tensor(input_ids, dtype=torch.int64), positions, cu, starts_t + q_lens_t, tables,
                          slots, sum(1 for n in q_lens if n == 1), list(sample_rows), list(full_rows))

    def metadata(self, inputs: StepInputs) -> AttentionMetadata:
        """Attention metadata on this rank's device."""
        layouts = {kind: KVLayout(inputs.block_tables[kind].to(self.device), inputs.slot_mapping[kind].to(self.device),
                                  self.kv.ring_blocks.get(kind)) for kind in self.kv.specs}
        cu, seq_lens = inputs.query_start_loc, inputs.seq_lens
        return AttentionMetadata(
            query_start_loc=cu.to(self.device), seq_lens=seq_lens.to(self.device),
            positions=inputs.positions.to(self.device), layouts=layouts, num_decodes=inputs.num_decodes,
            query_start_loc_host=cu.tolist(), seq_lens_host=seq_lens.tolist(),
        )
