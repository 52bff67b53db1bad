"""Tensor-parallel layers (Megatron style): each rank holds a slice of a weight and loads only it.

Column-parallel layers split output rows and need no communication; row-parallel layers split
input columns and all-reduce their partial sums; the vocabulary is split by rows for both the
embedding and the LM head. At size 1 each layer is one plain F.linear / F.embedding.

On the CPU, `prepack_linears` reorders every weight once into oneDNN's blocked layout where
engine.cpu_features.linear_path says this CPU supports it: the matmuls of a decode step then run about
twice as fast as F.linear's (see benchmarks/RESULTS.md, issue 12). Under
torch.compile a packed matmul is the opaque op `exaone::packed_linear`: dynamo cannot trace oneDNN's
packed tensors, so the op finds the layer by id.

With `--quantization` a layer's `quant_method` (engine.model.quant) receives the slices cut here and
serves the matmul (and a tied embedding's lookup) from 8- or 16-bit weights instead.
"""

from __future__ import annotations

import itertools
import weakref
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from engine.parallel.state import all_reduce, gather_last_dim, tp_rank, tp_size


class LinearMethod(Protocol):
    """What serves a layer's weight in another format (engine.model.quant): vLLM's quant_method."""

    def load(self, piece: torch.Tensor, row_offset: int) -> None:
        """Keep this rank's slice of one checkpoint part (a tensor or a quantized weight)."""

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """x W^T."""

    def embedding(self, ids: torch.Tensor) -> torch.Tensor:
        """The weight's rows for `ids`."""

    def nbytes(self) -> int:
        """Bytes the served weight takes."""


class ShardedLayer(nn.Module, ABC):
    """A layer whose `weight` is this rank's slice of one or more full checkpoint tensors (parts)."""

    full_shapes: list[tuple[int, ...]]  # the checkpoint shape of each part
    packed: torch.Tensor | None = None  # the weight in oneDNN's layout, once prepack() ran
    packed_id: int | None = None  # this layer's key in _PACKED, once prepack() ran
    quant_method: LinearMethod | None = None  # set before loading to keep the weight quantized

    @abstractmethod
    def shard(self, full: torch.Tensor, part: int) -> tuple[torch.Tensor, int]:
        """This rank's slice of part `part` (a full checkpoint tensor), and the row of the weight it starts at."""

    def load_shard(self, full: torch.Tensor, part: int = 0) -> None:
        """Copy this rank's slice of part `part` into the weight (or hand it to the quant method)."""
        piece, offset = self.shard(full, part)
        if self.quant_method is not None:
            self.quant_method.load(piece, offset)
            return
        if not isinstance(piece, torch.Tensor):  # a quantized checkpoint tensor for a layer served in full
            piece = piece.dequantize(self.weight.dtype)
        self.weight[offset : offset + piece.shape[0]].copy_(piece)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x W^T, through the quant method or the packed weight when there is one."""
        if self.quant_method is not None:
            return self.quant_method.apply(x)
        if self.packed_id is not None and torch.compiler.is_compiling():
            return packed_linear(x, self.packed_id, self.out_features)
        if self.packed is None:
            return F.linear(x, self.weight)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [None], "")

    def prepack(self, keep_weight: bool) -> None:
        """Reorder the weight for oneDNN; the plain copy is freed unless something else reads it."""
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach())
        self.out_features = self.weight.shape[0]
        self.packed_id = next(_packed_ids)
        _PACKED[self.packed_id] = self
        if not keep_weight:
            self.weight = nn.Parameter(self.weight.new_empty(0), requires_grad=False)


class ColumnParallelLinear(ShardedLayer):
    """y = x W^T with W's output rows split over ranks; parts are stacked (fused q/k/v, gate/up).

    `part_shards[i]` is how many distinct slices part i is cut into: the group size normally, fewer
    when a part is replicated (KV heads when the group is larger than the number of KV heads).
    """

    def __init__(self, input_size: int, part_sizes: Sequence[int], part_shards: Sequence[int] | None = None) -> None:
        super().__init__()
        size, rank = tp_size(), tp_rank()
        shards = list(part_shards) if part_shards is not None else [size] * len(part_sizes)
        self.full_shapes = [(rows, input_size) for rows in part_sizes]
        # (first row in the full part, rows) of this rank's slice of each part
        self.slices: list[tuple[int, int]] = []
        for rows, n in zip(part_sizes, shards, strict=True):
            length = rows // n
            self.slices.append((rank * n // size * length, length))
        self.weight = nn.Parameter(torch.empty(sum(n for _, n in self.slices), input_size), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.matmul(x)

    def shard(self, full: torch.Tensor, part: int) -> tuple[torch.Tensor, int]:
        start, length = self.slices[part]
        return full[start : start + length], sum(n for _, n in self.slices[:part])


class RowParallelLinear(ShardedLayer):
    """y = x W^T with W's input columns split over ranks: each rank's partial product is all-reduced."""

    def __init__(self, input_size: int, output_size: int) -> None:
        super().__init__()
        self.full_shapes = [(output_size, input_size)]
        self.width = input_size // tp_size()
        self.weight = nn.Parameter(torch.empty(output_size, self.width), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return all_reduce(self.matmul(x))

    def shard(self, full: torch.Tensor, part: int) -> tuple[torch.Tensor, int]:
        start = tp_rank() * self.width
        return full[:, start : start + self.width], 0


class VocabParallelEmbedding(ShardedLayer):
    """Token embeddings with the vocabulary split over ranks; ids outside a rank's rows give zeros there."""

    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__()
        self.full_shapes = [(vocab_size, hidden_size)]
        self.rows = vocab_size // tp_size()
        self.start = tp_rank() * self.rows
        self.weight = nn.Parameter(torch.empty(self.rows, hidden_size), requires_grad=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if tp_size() == 1:
            return self.lookup(input_ids)
        outside = (input_ids < self.start) | (input_ids >= self.start + self.rows)
        h = self.lookup((input_ids - self.start).masked_fill(outside, 0))
        return all_reduce(h.masked_fill_(outside[:, None], 0.0))

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """This rank's rows for ids already made local."""
        if self.quant_method is not None:
            return self.quant_method.embedding(ids)
        return F.embedding(ids, self.weight)

    def shard(self, full: torch.Tensor, part: int) -> tuple[torch.Tensor, int]:
        return full[self.start : self.start + self.rows], 0

    def logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """hidden @ weight^T over the whole vocabulary, in fp32, on rank 0 (None on the others)."""
        logits = gather_last_dim(self.matmul(hidden))
        return None if logits is None else logits.float()


class ParallelLMHead(VocabParallelEmbedding):
    """The untied output projection: vocabulary rows split like the embedding's, logits gathered on rank 0."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor | None:
        return self.logits(hidden)


_PACKED: weakref.WeakValueDictionary[int, ShardedLayer] = weakref.WeakValueDictionary()
_packed_ids = itertools.count()


@torch.library.custom_op("exaone::packed_linear", mutates_args=())
def packed_linear(x: torch.Tensor, layer_id: int, out_features: int) -> torch.Tensor:
    """The packed matmul of layer `layer_id`, as one op torch.compile leaves alone."""
    return _PACKED[layer_id].matmul(x)


@packed_linear.register_fake
def _(x: torch.Tensor, layer_id: int, out_features: int) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], out_features)


def prepack_linears(model: nn.Module, tied_lm_head: bool) -> None:
    """Pack every linear weight for oneDNN; a tied embedding is packed for its logits and keeps its plain
    copy for the lookup, an untied one is only looked up and stays as it is."""
    for module in model.modules():
        if not isinstance(module, ShardedLayer):
            continue
        is_embedding = type(module) is VocabParallelEmbedding
        if module.quant_method is None and (not is_embedding or tied_lm_head):
            module.prepack(keep_weight=is_embedding)
