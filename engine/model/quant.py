"""Quantized linear weights on the CPU (`--quantization`, issue 23): int8 with group scales, or fp16.

`QuantizedWeight` is an int8 matrix with one fp32 scale (and optionally one fp32 offset) per group of
columns of each row, W = q * scale + offset: GGUF's Q8_0, Q4_0 and Q4_1 blocks and AWQ/GPTQ's 4-bit
groups all fit it exactly, so they load without a round trip through fp32. A layer's
`quant_method` collects this rank's slices while the checkpoint streams in (the parallel layers cut
them as they cut fp32 weights), then keeps them in its format and runs the matmul: the AVX2 kernels of
engine.model.cpu_quant where they run, else the same weights dequantized (same outputs, no speed-up).
In int8 mode decode batches take integer dot products against activations quantized per 32 (llama.cpp's
Q8_0 rule), and 4-bit codes stay 4 bits (two per byte), so a Q4 GGUF or AWQ/GPTQ layer is read at its
own size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import QUANTIZATION_MODES
from engine.cpu_features import quant_kernel_path
from engine.errors import ModelLoadError
from engine.model.cpu_quant import cpu_quant_ops
from engine.model.quant_modes import CHECKPOINT_METHODS, CPU_MODES
from engine.parallel.layers import ShardedLayer, VocabParallelEmbedding

if TYPE_CHECKING:
    from engine.model.quant_formats.spec import CheckpointQuant

logger = logging.getLogger(__name__)

# The kernels beat fp32 while a step reads each weight for few tokens (decode); from ~16 rows on they are
# compute-bound and slower than MKL's fp32 GEMM (benchmarks/quant_matmul.py).
KERNEL_MAX_ROWS = 16
INT8_GROUP_SIZE = 32  # fp32 weights quantized to int8 get one scale per 32 columns, as GGUF's Q8_0
# Decode batches quantize their activations per 32 values (Q8_0's rule, as llama.cpp's CPU dot products do)
# and take integer dot products with the int8 weights; shapes that do not fit keep fp32 activations.
Q8_BLOCK = 32
# On weights interleaved 8 rows wide the integer dot beats widening them for fp32 GEMM at every batch
# measured on AVX2 (up to 1024 rows, benchmarks/quant_matmul.py), so prefill chunks take it too (a burst of
# prompts fills the CPU's 512-token steps); beyond this (a raised --max-num-batched-tokens, where AVX-512's
# fp32 GEMM may lead) the weight is widened once per call.
Q8_KERNEL_MAX_ROWS = 1024


class _Codes:
    """What both layouts of quantized codes answer alike (they have q, scale and shape)."""

    q: torch.Tensor
    scale: torch.Tensor
    shape: torch.Size

    @property
    def packed(self) -> bool:
        """Whether q holds 4-bit codes two per byte."""
        return self.q.dtype == torch.uint8

    @property
    def group_size(self) -> int:
        """Columns per scale."""
        return self.shape[1] // self.scale.shape[1]


@dataclass
class QuantizedWeight(_Codes):
    """An [N, K] matrix as int8 q with [N, K / group] fp32 scales and optional offsets: q * scale + offset.
    A uint8 q of [N, K / 2] holds 4-bit codes two per byte (pack_int4)."""

    q: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor | None = None

    @property
    def shape(self) -> torch.Size:
        """The shape of the matrix it stands for (as a checkpoint tensor's)."""
        n, k = self.q.shape
        return torch.Size((n, 2 * k)) if self.packed else self.q.shape

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The matrix in `dtype`, computed in fp32 as the kernels compute it."""
        codes = unpack_int4(self.q) if self.packed else self.q
        w = codes.float().view(*self.scale.shape, -1) * self.scale[..., None]
        if self.offset is not None:
            w += self.offset[..., None]
        return w.view(self.shape).to(dtype)

    def __getitem__(self, index: slice | tuple[slice, slice]) -> QuantizedWeight | torch.Tensor:
        """Rows (and columns) as a tensor slice; a column cut inside a group returns the dequantized slice."""
        rows, cols = index if isinstance(index, tuple) else (index, slice(None))
        start, stop, _ = cols.indices(self.shape[1])
        g = self.group_size
        if start % g or stop % g:
            return self.dequantize()[rows, cols]
        group_cols = slice(start // g, stop // g)
        offset = None if self.offset is None else self.offset[rows, group_cols]
        return QuantizedWeight(self.q[rows, cols], self.scale[rows, group_cols], offset)


def quantize_int8(w: torch.Tensor, group_size: int = INT8_GROUP_SIZE) -> QuantizedWeight:
    """Symmetric int8 per group of columns (scale = max |w| / 127), Q8_0's rule; whole rows if K % group."""
    n, k = w.shape
    group = group_size if k % group_size == 0 else k
    blocks = w.float().reshape(n, k // group, group)
    scale = blocks.abs().amax(-1) / 127.0
    q = torch.where(scale[..., None] > 0, blocks / scale[..., None], 0.0).round().clamp(-127, 127)
    return QuantizedWeight(q.to(torch.int8).reshape(n, k).contiguous(), scale.contiguous())


def pack_int4(w: QuantizedWeight) -> QuantizedWeight | None:
    """The weight with its codes two per byte (llama.cpp's Q4 layout: in each block of 32, byte j holds code j
    low and code j + 16 high) where all are 4-bit: 0..15 as Q4_1's and AWQ/GPTQ's, or Q4_0's -8..7 (shifted
    by 8, the shift moved into the offset); None where they are not, or K or the group is no multiple of 32."""
    if w.packed or w.shape[1] % Q8_BLOCK or w.group_size % Q8_BLOCK:
        return None
    low, high = int(w.q.min()), int(w.q.max())
    q, offset = w.q, w.offset
    if low >= -8 and high <= 7 and offset is None and low < 0:
        q, offset = (q.to(torch.int16) + 8).to(torch.uint8), -8.0 * w.scale
    elif low < 0 or high > 15:
        return None
    blocks = q.to(torch.uint8).view(w.shape[0], -1, 2, Q8_BLOCK // 2)
    packed = blocks[:, :, 0] | (blocks[:, :, 1] << 4)
    return QuantizedWeight(packed.reshape(w.shape[0], -1).contiguous(), w.scale,
                           None if offset is None else offset.contiguous())


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """[N, K / 2] packed codes (pack_int4) as [N, K] uint8 codes."""
    blocks = packed.view(packed.shape[0], -1, Q8_BLOCK // 2)
    return torch.cat([blocks & 0x0F, blocks >> 4], dim=-1).view(packed.shape[0], -1)


LANES = 8  # rows the integer-dot kernels take side by side (int8_x8_linear)


@dataclass
class InterleavedWeight(_Codes):
    """A QuantizedWeight laid out for the integer-dot kernels: rows in groups of 8, each 32-byte vector of a
    block holding 4 columns of all 8 (int8), or 8 (4-bit: the second 4 in the high nibbles); scales and
    offsets [N / 8, K / group, 8]. `offset` is empty where there are none (as the kernels take it)."""

    q: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor
    shape: torch.Size

    @classmethod
    def of(cls, w: QuantizedWeight) -> InterleavedWeight | None:
        """w's codes interleaved (4-bit ones kept two per byte); None where N % 8, K % 32 or the group % 32."""
        n, k = w.shape
        if n % LANES or k % Q8_BLOCK or w.group_size % Q8_BLOCK:
            return None
        codes = unpack_int4(w.q) if w.packed else w.q
        if w.packed:  # group, block, vector, row, 4 columns; the second 4 go to the high nibbles
            c = codes.view(n // LANES, LANES, k // Q8_BLOCK, 4, 2, 4).permute(0, 2, 3, 4, 1, 5)
            q = (c[:, :, :, 0] | (c[:, :, :, 1] << 4)).contiguous().view(n // LANES, -1)
        else:
            q = codes.view(n // LANES, LANES, k // Q8_BLOCK, 8, 4).permute(0, 2, 3, 1, 4).contiguous().view(n // LANES, -1)

        def lanes(t: torch.Tensor) -> torch.Tensor:
            return t.view(n // LANES, LANES, -1).transpose(1, 2).contiguous()

        offset = torch.empty(0) if w.offset is None else lanes(w.offset)
        return cls(q, lanes(w.scale), offset, w.shape)

    def rows(self, ids: torch.Tensor) -> QuantizedWeight:
        """Rows `ids` in the row-major layout (codes one per byte), e.g. for a tied embedding's lookup."""
        n, k = self.shape
        group, lane = ids // LANES, ids % LANES
        if self.packed:
            v = self.q.view(n // LANES, k // Q8_BLOCK, 4, LANES, 4)[group, :, :, lane]  # [ids, blocks, 4, 4]
            codes = torch.stack([v & 0x0F, v >> 4], dim=-2).view(len(ids), k).to(torch.int8)
        else:
            codes = self.q.view(n // LANES, k // Q8_BLOCK, 8, LANES, 4)[group, :, :, lane].reshape(len(ids), k)
        offset = self.offset[group, :, lane] if self.offset.numel() else None
        return QuantizedWeight(codes, self.scale[group, :, lane], offset)


def concat_rows(parts: list[QuantizedWeight]) -> QuantizedWeight:
    """Stack parts by rows (fused q/k/v, gate/up); parts with other group sizes are requantized to the first's."""
    group = parts[0].group_size
    parts = [p if p.group_size == group else quantize_int8(p.dequantize(), group) for p in parts]
    offsets = None
    if any(p.offset is not None for p in parts):
        offsets = torch.cat([torch.zeros_like(p.scale) if p.offset is None else p.offset for p in parts])
    return QuantizedWeight(torch.cat([p.q for p in parts]).contiguous(), torch.cat([p.scale for p in parts]).contiguous(),
                           None if offsets is None else offsets.contiguous())


class QuantLinearMethod:
    """One layer's weight in an 8- or 16-bit format: collected per part while loading, then served."""

    def __init__(self, mode: str, dtype: torch.dtype) -> None:
        self.mode, self.dtype = mode, dtype
        self.parts: dict[int, QuantizedWeight | torch.Tensor] = {}  # row offset -> this rank's slice
        self.interleaved: InterleavedWeight | None = None  # int8 mode, after finish(), where shapes allow it
        self.weight: QuantizedWeight | None = None  # int8 mode where they do not: fp32 activations
        self.offset_arg: torch.Tensor | None = None  # self.weight's offsets, or an empty tensor, as the kernels take them
        self.fp16: torch.Tensor | None = None  # fp16 mode, after finish()
        self.kernels = cpu_quant_ops() if dtype == torch.float32 else None

    def load(self, piece: QuantizedWeight | torch.Tensor, row_offset: int) -> None:
        """Keep this rank's slice of one checkpoint part, which starts at `row_offset` of the layer's rows."""
        self.parts[row_offset] = piece

    def finish(self, layer: ShardedLayer) -> None:
        """Turn the collected parts into the layer's weight; without kernels, write them dequantized into
        layer.weight and step aside (the layer then packs it for oneDNN as any fp32 layer)."""
        pieces = [self.parts[k] for k in sorted(self.parts)]
        self.parts = {}
        if self.kernels is None:
            with torch.no_grad():
                layer.weight.copy_(torch.cat([_dense(p, self.dtype) for p in pieces]))
            layer.quant_method = None
            return
        if self.mode == "int8":
            weight = concat_rows([p if isinstance(p, QuantizedWeight) else quantize_int8(_dense(p, torch.float32))
                                  for p in pieces])
            # 4-bit codes are read as 4 bits: half the bytes of a decode step
            self.interleaved = InterleavedWeight.of(pack_int4(weight) or weight)
            if self.interleaved is None:
                self.weight = weight
                # the kernel takes an empty tensor for "no offsets": made once, not per call on the decode path
                self.offset_arg = weight.offset if weight.offset is not None else torch.empty(0)
        else:
            self.fp16 = torch.cat([_dense(p, torch.float16) for p in pieces]).contiguous()
        layer.weight = nn.Parameter(layer.weight.new_empty(0), requires_grad=False)

    @property
    def row_limit(self) -> int:
        """Rows up to which a call takes the kernels; larger ones widen the weight and run MKL's fp32 GEMM."""
        return Q8_KERNEL_MAX_ROWS if self.interleaved is not None else KERNEL_MAX_ROWS

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """x W^T in fp32; prefill-sized batches widen the weight once and run MKL's GEMM on it."""
        assert self.kernels is not None
        il, w = self.interleaved, self.weight
        if x.shape[0] > self.row_limit:
            if il is not None:
                return F.linear(x, self.kernels.int8_dequantize(il.q, il.scale, il.offset))
            return F.linear(x, self.fp16.float() if self.fp16 is not None else w.dequantize())
        if il is not None:
            return self.kernels.int8_x8_linear(x, il.q, il.scale, il.offset)
        if self.fp16 is not None:
            return self.kernels.fp16_linear(x, self.fp16)
        return self.kernels.int8_linear(x, w.q, w.scale, self.offset_arg)

    def embedding(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows of the weight for token ids (a tied embedding), dequantized."""
        if self.fp16 is not None:
            return F.embedding(ids, self.fp16).float()
        if self.interleaved is not None:
            return self.interleaved.rows(ids.flatten()).dequantize().view(*ids.shape, -1)
        w = self.weight
        rows = QuantizedWeight(w.q[ids], w.scale[ids], None if w.offset is None else w.offset[ids])
        return rows.dequantize()

    def nbytes(self) -> int:
        """Bytes the served weight takes."""
        w = self.interleaved or self.weight
        tensors = [self.fp16] if self.fp16 is not None else [w.q, w.scale, w.offset]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _dense(piece: QuantizedWeight | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # anything not a tensor is a checkpoint format's weight (QuantizedWeight, an FP8 one) and dequantizes itself
    return piece.to(dtype) if isinstance(piece, torch.Tensor) else piece.dequantize(dtype)


def served_mode(requested: str, checkpoint: CheckpointQuant | None, device: torch.device) -> str:
    """The CPU mode a --quantization value serves: a checkpoint method (awq, gptq, fp8) must be the checkpoint's
    own and serves it as stored (int8 on the CPU; on CUDA quantized checkpoints always are)."""
    if requested not in CHECKPOINT_METHODS:
        return requested
    found = checkpoint.method if checkpoint is not None else None
    if found != requested:
        raise ModelLoadError(f"--quantization {requested}: " + (
            f"the checkpoint's config.json declares quant_method {found!r}" if found else
            "the checkpoint has no quantization_config (a GGUF or a 16/32-bit checkpoint): use int8 or fp16"))
    return "int8" if device.type == "cpu" else "none"


def row_limits(model: nn.Module) -> set[int]:
    """The batch sizes above which the model's quantized layers change path (where a compiled graph, which
    guards on the branch, needs a second variant)."""
    return {m.quant_method.row_limit for m in model.modules()
            if isinstance(m, ShardedLayer) and isinstance(m.quant_method, QuantLinearMethod) and m.quant_method.kernels}


def install_quant_methods(model: nn.Module, mode: str, dtype: torch.dtype, tied_lm_head: bool) -> None:
    """Give every linear (and a tied embedding, which is the LM head) a QuantLinearMethod before loading."""
    if mode not in CPU_MODES:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATION_MODES)}, got {mode!r}")
    if mode == "none":
        return
    ok, why = quant_kernel_path()
    if not ok or dtype != torch.float32:
        logger.warning("--quantization %s: %s", mode, why if not ok else "kernels need float32 activations; "
                       "weights served dequantized")
    for module in model.modules():
        if isinstance(module, ShardedLayer) and (type(module) is not VocabParallelEmbedding or tied_lm_head):
            module.quant_method = QuantLinearMethod(mode, dtype)


def finish_quant_methods(model: nn.Module) -> None:
    """After loading: every collected layer takes its served format."""
    for module in model.modules():
        if isinstance(module, ShardedLayer) and module.quant_method is not None:
            module.quant_method.finish(module)
