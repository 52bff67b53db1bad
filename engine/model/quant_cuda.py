"""Quantized checkpoints served as they are on CUDA: AWQ/GPTQ through the Triton W4A16 GEMM, FP8 with row
scales through torch._scaled_mm (FP8 tensor cores, Ada/Hopper), FP8 with block scales through a Triton
weight-only GEMM, each behind the same linear interface as the parallel layers.

A layer's method collects this rank's slices while the checkpoint streams in, as engine.model.quant does on
the CPU; at finish it keeps them in its format or, where none fits (plain weights such as an lm_head left in
16 bits, a GPU without FP8 matmuls, groups or blocks the GEMMs cannot tile), writes the weight dequantized
into layer.weight and steps aside: the same outputs, no saving.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.model.quant import QuantizedWeight, concat_rows
from engine.model.quant_formats.fp8 import Fp8Weight
from engine.parallel.layers import ShardedLayer, VocabParallelEmbedding
from exaone_kernels import fp8_block
from exaone_kernels.fp8_block import fp8_block_matmul
from exaone_kernels.w4a16 import BLOCK_K, pack_w4, w4a16_matmul

FP8_MAX = torch.finfo(torch.float8_e4m3fn).max
Piece = QuantizedWeight | Fp8Weight | torch.Tensor


def fp8_matmul_supported(device: torch.device) -> bool:
    """Whether torch._scaled_mm runs FP8 here: CUDA compute capability 8.9 (Ada) or newer, or the CPU."""
    return device.type == "cpu" or (device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9))


def _w4_fits(pieces: list[Piece]) -> bool:
    return all(isinstance(p, QuantizedWeight) and p.offset is not None and p.group_size % BLOCK_K == 0
               and int(p.q.min()) >= 0 and int(p.q.max()) <= 15 for p in pieces)


def _fp8_fits(pieces: list[Piece], device: torch.device) -> bool:
    # _scaled_mm wants both matrix dims of the weight in multiples of 16, and row scales (no blocks)
    return fp8_matmul_supported(device) and all(
        isinstance(p, Fp8Weight) and p.block is None and p.shape[1] % 16 == 0 for p in pieces)


def _fp8_block_fits(pieces: list[Piece]) -> bool:
    # parts stack by rows, so each but the last must end on a whole scale block
    if not all(isinstance(p, Fp8Weight) and p.block == pieces[0].block for p in pieces):
        return False
    bn, bk = pieces[0].block or (0, 0)
    return bk % fp8_block.BLOCK_K == 0 and bn > 0 and all(p.shape[0] % bn == 0 for p in pieces[:-1])


class CudaQuantMethod:
    """One layer's weight as the checkpoint stored it, served by the W4A16 GEMM or FP8 _scaled_mm."""

    def __init__(self) -> None:
        self.parts: dict[int, Piece] = {}  # row offset -> this rank's slice
        self.w4: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # qweight, scales, offsets
        self.fp8: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None  # w^T, row scales, input
        self.fp8_block: tuple[torch.Tensor, torch.Tensor, tuple[int, int]] | None = None  # w, block scales, block

    def load(self, piece: Piece, row_offset: int) -> None:
        """Keep this rank's slice of one checkpoint part, which starts at `row_offset` of the layer's rows."""
        self.parts[row_offset] = piece

    def finish(self, layer: ShardedLayer) -> None:
        """Keep the collected parts in a served format, or write them dequantized into layer.weight."""
        pieces = [self.parts[k] for k in sorted(self.parts)]
        self.parts = {}
        device, dtype = layer.weight.device, layer.weight.dtype
        rows = sum(p.shape[0] for p in pieces)
        if _w4_fits(pieces):
            w = concat_rows(pieces)
            self.w4 = (pack_w4(w.q).to(device), w.scale.T.contiguous().to(device), w.offset.T.contiguous().to(device))
        elif _fp8_fits(pieces, device) and rows % 16 == 0:
            scales = [p.input_scale for p in pieces if p.input_scale is not None]
            # fused parts share one activation scale: the largest keeps every part's inputs in range (vLLM's rule)
            input_scale = torch.stack([s.float().reshape(()) for s in scales]).max().to(device) if scales else None
            w = torch.cat([p.w for p in pieces]).to(device)
            self.fp8 = (w.T, torch.cat([p.scale for p in pieces]).to(device)[None, :], input_scale)
        elif _fp8_block_fits(pieces):
            w = torch.cat([p.w for p in pieces]).contiguous().to(device)
            self.fp8_block = (w, torch.cat([p.scale for p in pieces]).contiguous().to(device), pieces[0].block)
        else:
            with torch.no_grad():
                layer.weight.copy_(torch.cat([p.to(dtype) if isinstance(p, torch.Tensor) else p.dequantize(dtype)
                                              for p in pieces]))
            layer.quant_method = None
            return
        layer.weight = nn.Parameter(layer.weight.new_empty(0), requires_grad=False)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """x W^T in x's dtype."""
        flat = x.reshape(-1, x.shape[-1]).contiguous()
        if self.w4 is not None:
            return w4a16_matmul(flat, *self.w4).reshape(*x.shape[:-1], -1)
        if self.fp8_block is not None:
            return fp8_block_matmul(flat, *self.fp8_block).reshape(*x.shape[:-1], -1)
        assert self.fp8 is not None
        w_t, w_scale, input_scale = self.fp8
        if input_scale is None:  # dynamic: one scale per token, as vLLM's per-token FP8 path
            x_scale = (flat.abs().amax(-1, keepdim=True).float() / FP8_MAX).clamp(min=1e-12)
        else:
            x_scale = input_scale.expand(flat.shape[0], 1)
        xq = (flat.float() / x_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        y = torch._scaled_mm(xq, w_t, scale_a=x_scale.contiguous(), scale_b=w_scale, out_dtype=x.dtype)
        return y.reshape(*x.shape[:-1], -1)

    def embedding(self, ids: torch.Tensor) -> torch.Tensor:
        """Not served: embeddings are never installed a CUDA method (checkpoints keep them in 16 bits)."""
        raise NotImplementedError("quantized embeddings are not served on CUDA")

    def nbytes(self) -> int:
        """Bytes the served weight takes."""
        held = (*(self.w4 or ()), *(self.fp8 or ()), *(self.fp8_block or ())[:2])
        tensors = [t for t in held if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)


def install_cuda_quant_methods(model: nn.Module) -> None:
    """Give every linear (not the embedding) a CudaQuantMethod before a quantized checkpoint loads."""
    for module in model.modules():
        if isinstance(module, ShardedLayer) and type(module) is not VocabParallelEmbedding:
            module.quant_method = CudaQuantMethod()
