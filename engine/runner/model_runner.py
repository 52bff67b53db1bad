"""Model runner: turns a scheduled batch into flat tensors and runs the model on them.

On CUDA the step's inputs are copied into persistent device buffers, and decode batches replay a CUDA
graph captured for the next size up in a ladder of batch sizes (padding rows have slot -1 and
seq_len 0, so they write nothing and read nothing). Prefill chunks, and every step on the CPU, run eagerly;
on the CPU the linear weights are first packed for oneDNN where the CPU supports it (engine.cpu_features), the
in-place decode attention is compiled (engine.attention.paged_decode; not with enforce_eager), and with `compile`
the decoder layers run as one torch.compile graph (engine.model.compiled).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from engine.attention import cpu_decode
from engine.attention.backend import AttentionMetadata, KVLayout
from engine.attention.torch_backend import TorchAttentionBackend
from engine.config import EngineConfig
from engine.core.scheduler import ScheduledBatch
from engine.cpu_features import linear_path
from engine.kv.kv_cache import KVCacheManager
from engine.model.quant import row_limits
from engine.model.transformer import HybridTransformer
from engine.parallel.layers import prepack_linears
from engine.runner.block_tables import BlockTableMirror
from engine.runner.step_inputs import StepInputs

if TYPE_CHECKING:
    from engine.parallel.channel import StepChannel


def graph_batch_sizes(max_num_seqs: int) -> list[int]:
    """Decode batch sizes to capture: 1, 2, 4, 8, then every 8 up to max_num_seqs (which is always in)."""
    sizes = [n for n in (1, 2, 4) if n < max_num_seqs] + list(range(8, max_num_seqs, 8))
    return [*sizes, max_num_seqs]


class ModelRunner:
    """Owns the KV cache tensors; builds positions, slot mappings and block tables for each step."""

    def __init__(self, model: HybridTransformer, kv: KVCacheManager, dtype: torch.dtype,
                 device: torch.device, config: EngineConfig) -> None:
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
        self.block_tables = {kind: BlockTableMirror(config.max_running_seqs, self._table_width(kind, config))
                             for kind in kv.specs}
        self.buffers: dict[str, torch.Tensor] = {}
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        if device.type == "cpu" and linear_path(dtype, config.prepack_weights)[0]:
            prepack_linears(model, model.cfg.tie_word_embeddings)
        cpu_torch_attention = device.type == "cpu" and isinstance(attn.backend, TorchAttentionBackend)
        if cpu_torch_attention:
            attn.backend.cpu_kernel = cpu_decode.serves(dtype, attn.num_heads, attn.num_kv_heads, attn.head_dim)
        if config.compile:
            self._compile(config.max_num_batched_tokens)
        if cpu_torch_attention and not (config.enforce_eager or attn.backend.cpu_kernel):
            # where the C++ decode serves, it takes every decode: the compiled loop is for the other cases
            attn.backend.in_place_decode.compile(self.layer_caches[0], attn.num_heads, attn.scale)
        if device.type == "cuda":
            self._allocate_buffers(config)
            # Tensor-parallel ranks would have to capture in lockstep (collectives inside the graph): eager there.
            if not (config.enforce_eager or config.tensor_parallel_size > 1
                    or isinstance(attn.backend, TorchAttentionBackend)):
                self.capture_graphs(graph_batch_sizes(config.max_running_seqs))
                self.warm_up_prefill()

    def _compile(self, max_step_tokens: int) -> None:
        """Compile the decoder layers now, not on the first request: one graph for single-token steps,
        one for every larger token count (steps of padding rows only, which write and read nothing), and
        one past each batch size where quantized layers change path (else the first long prompt waits
        for that variant to compile). The largest step runs too: a graph loaded from inductor's on-disk
        cache can bring a narrower size guard from the code that cached it (a burst of prompts once
        waited 17 s mid-serving on the variant), and that variant then compiles here."""
        if self.device.type != "cpu":
            raise ValueError("--compile is for the CPU path (CUDA decode steps use CUDA graphs)")
        self.model.compile_layers()
        for size in (1, 2):
            self.run(self.prepare(ScheduledBatch(), padded_seqs=size))
        past_limits = {limit + 1 for limit in row_limits(self.model) if limit < max_step_tokens}
        for tokens in sorted(past_limits | {max_step_tokens}):
            self.warm_up_prefill(tokens)

    def copy_blocks(self, copies: list[tuple[str, int, int]]) -> None:
        """Copy whole blocks (all layers of a pool), e.g. the partial last block of a forked sample; on every
        rank of a tensor-parallel group."""
        if self.channel is not None and copies:
            self.channel.send_copies(copies)
        for kind, src, dst in copies:
            self.caches[kind][:, :, dst] = self.caches[kind][:, :, src]

    def execute(self, batch: ScheduledBatch, sample_rows: list[int], full_rows: Sequence[int] = (),
                spec_rows: Sequence[int] = ()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Run the batch: fp32 logits of the last token of each sequence in sample_rows (of every new token
        for those also in spec_rows, in order), and of every token of each sequence in full_rows (prompt
        logprobs). Decode sequences must come first."""
        graph_size = None
        if self.graphs and all(n == 1 for n in batch.num_new_tokens):
            graph_size = next((size for size in self.graphs if size >= len(batch)), None)
        inputs = self.prepare(batch, sample_rows, full_rows, graph_size)
        inputs.spec_rows = list(spec_rows)
        if self.channel is not None:
            self.channel.send_step(inputs)
        return self.run(inputs)

    @torch.inference_mode()
    def run(self, inputs: StepInputs) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """The model on one step's inputs; every rank runs this (logits are None off rank 0)."""
        meta, input_ids = self.metadata(inputs)
        num_seqs = len(inputs.seq_lens)
        captured = self.graphs.get(num_seqs) if inputs.num_decodes == num_seqs else None
        if captured is None:
            hidden = self.model(input_ids, meta, self.layer_caches)
        else:
            graph, hidden = captured
            graph.replay()
        starts = meta.query_start_loc_host
        if inputs.spec_rows:  # verification: every new token of a spec row, the last one of the others
            spec = set(inputs.spec_rows)
            index = [j for r in inputs.sample_rows
                     for j in (range(starts[r], starts[r + 1]) if r in spec else (starts[r + 1] - 1,))]
            logits = self.model.compute_logits(hidden[torch.tensor(index, device=hidden.device)])
        else:
            last = meta.query_start_loc[1:] - 1
            logits = self.model.compute_logits(hidden[last[inputs.sample_rows]])
        full = {row: self.model.compute_logits(hidden[starts[row] : starts[row + 1]]) for row in inputs.full_rows}
        return logits, full

    def prepare(self, batch: ScheduledBatch, sample_rows: Sequence[int] = (), full_rows: Sequence[int] = (),
                padded_seqs: int | None = None) -> StepInputs:
        """Flat input ids, positions and per-pool slot mappings and block tables, vectorised over tokens.

        padded_seqs > len(batch) appends one-token padding sequences (for a captured decode graph).
        """
        seqs, q_lens = batch.seqs, list(batch.num_new_tokens)
        starts = [s.num_computed_tokens for s in seqs]
        input_ids = list(itertools.chain.from_iterable(
            s.step_token_ids(a, n) for s, a, n in zip(seqs, starts, q_lens, strict=True)))
        num_pad = (padded_seqs or len(seqs)) - len(seqs)
        q_lens_t = torch.tensor(q_lens + [1] * num_pad)
        cu = torch.zeros(len(q_lens_t) + 1, dtype=torch.int64)
        torch.cumsum(q_lens_t, 0, out=cu[1:])
        seq_idx = torch.repeat_interleave(torch.arange(len(q_lens_t)), q_lens_t)
        starts_t = torch.tensor(starts + [0] * num_pad)
        positions = torch.arange(int(cu[-1])) - cu[:-1][seq_idx] + starts_t[seq_idx]
        seq_lens = starts_t + q_lens_t
        seq_lens[len(seqs):] = 0  # padding rows attend over nothing
        bs = self.kv.block_size
        tables, slots = {}, {}
        for kind, mirror in self.block_tables.items():
            tables[kind] = table_t = mirror.gather([s.block_tables[kind] for s in seqs], num_pad)
            ring = self.kv.ring_blocks.get(kind)
            entry = positions // bs if ring is None else (positions // bs) % ring
            slots[kind] = table_t[seq_idx, entry] * bs + positions % bs  # negative for padding rows: skipped
        ids = torch.tensor(input_ids + [0] * num_pad, dtype=torch.int64)
        return StepInputs(ids, positions, cu, seq_lens, tables, slots, int((q_lens_t == 1).sum()),
                          list(sample_rows), list(full_rows))

    def metadata(self, inputs: StepInputs) -> tuple[AttentionMetadata, torch.Tensor]:
        """Attention metadata and input ids on this rank's device (in the persistent buffers on CUDA)."""
        host = {"input_ids": inputs.input_ids, "positions": inputs.positions, "seq_lens": inputs.seq_lens,
                "query_start_loc": inputs.query_start_loc,
                **{f"tables.{kind}": t for kind, t in inputs.block_tables.items()},
                **{f"slots.{kind}": t for kind, t in inputs.slot_mapping.items()}}
        dev = self._stage(host)
        layouts = {kind: KVLayout(dev[f"tables.{kind}"], dev[f"slots.{kind}"], self.kv.ring_blocks.get(kind))
                   for kind in self.kv.specs}
        meta = AttentionMetadata(
            query_start_loc=dev["query_start_loc"], seq_lens=dev["seq_lens"], positions=dev["positions"],
            layouts=layouts, num_decodes=inputs.num_decodes,
            query_start_loc_host=inputs.query_start_loc.tolist(), seq_lens_host=inputs.seq_lens.tolist(),
        )
        return meta, dev["input_ids"]

    def _stage(self, host: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The step's host tensors on the device. With persistent buffers (CUDA) in one copy, not one per tensor:
        packed into a pinned host buffer, sent without blocking, then spread on the device into the buffers
        whose addresses the captured graphs read."""
        if not self.buffers:
            return {name: t.to(self.device) for name, t in host.items()}
        offset, spans = 0, {}
        for name, t in host.items():
            # Safe to overwrite: the previous step's copy finished before its results were read (sampling, or
            # on other ranks the collectives), which is before this step's inputs exist.
            self.pinned[offset : offset + t.numel()].view(t.shape).copy_(t)
            spans[name] = (offset, t.shape)
            offset += t.numel()
        self.staging[:offset].copy_(self.pinned[:offset], non_blocking=True)
        staged = {}
        for name, (start, shape) in spans.items():
            view = self.buffers[name][tuple(slice(0, n) for n in shape)]
            view.copy_(self.staging[start : start + shape.numel()].view(shape))
            staged[name] = view
        return staged

    def _allocate_buffers(self, config: EngineConfig) -> None:
        """Device buffers sized for the largest step, reused by every step and read by the graphs, and the
        pinned host buffer and device buffer a step's inputs travel through together."""
        max_tokens = max(config.max_num_batched_tokens, config.max_running_seqs)
        max_seqs = config.max_running_seqs
        new = lambda *shape: torch.zeros(*shape, dtype=torch.int64, device=self.device)  # noqa: E731
        self.buffers = {"input_ids": new(max_tokens), "positions": new(max_tokens), "seq_lens": new(max_seqs),
                        "query_start_loc": new(max_seqs + 1)}
        for kind in self.kv.specs:
            self.buffers[f"tables.{kind}"] = new(max_seqs, self._table_width(kind, config))
            self.buffers[f"slots.{kind}"] = new(max_tokens)
        total = sum(b.numel() for b in self.buffers.values())
        self.pinned = torch.empty(total, dtype=torch.int64, pin_memory=self.device.type == "cuda")
        self.staging = new(total)

    def _table_width(self, kind: str, config: EngineConfig) -> int:
        """Entries in the widest block table of a pool: its ring, or the blocks of max_model_len tokens."""
        return self.kv.ring_blocks.get(kind) or -(-config.max_model_len // self.kv.block_size)

    @torch.inference_mode()
    def warm_up_prefill(self, tokens: int = 2) -> None:
        """Run one prefill step of a `tokens`-long sequence that holds no block, so it writes and reads no
        cache: the prefill kernel variants compile at start-up instead of on the first request."""
        none = {kind: torch.full((1, 1), -1, dtype=torch.int64) for kind in self.kv.specs}
        no_slots = {kind: torch.full((tokens,), -1, dtype=torch.int64) for kind in self.kv.specs}
        self.run(StepInputs(torch.zeros(tokens, dtype=torch.int64), torch.arange(tokens), torch.tensor([0, tokens]),
                            torch.tensor([tokens]), none, no_slots, num_decodes=0))

    @torch.inference_mode()
    def capture_graphs(self, sizes: list[int]) -> None:
        """Capture one decode step per batch size, largest first so smaller ones reuse its memory pool."""
        pool = None
        for size in sorted(sizes, reverse=True):
            meta, input_ids = self.metadata(self.prepare(ScheduledBatch(), padded_seqs=size))  # all padding
            self.model(input_ids, meta, self.layer_caches)  # compiles the kernels outside the capture
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                hidden = self.model(input_ids, meta, self.layer_caches)
            pool = graph.pool()
            self.graphs[size] = (graph, hidden)
        self.graphs = dict(sorted(self.graphs.items()))
