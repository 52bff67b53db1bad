"""FP8 (e4m3) checkpoint weights with their scales: per tensor, per output channel, or per 2-D block.

W = w * scale, with w float8_e4m3fn [N, K] and the scale a scalar (Hugging Face / vLLM `fp8`,
compressed-tensors `tensor`), one per row ([N] or [N, 1], compressed-tensors `channel`), or one per
[bn, bk] block ([ceil(N/bn), ceil(K/bk)], Hugging Face's `weight_block_size` with `weight_scale_inv`,
compressed-tensors `block`). Scales are kept per row or per block, so a tensor-parallel slice of rows
(or of whole blocks) stays FP8; the CUDA path multiplies in FP8 (engine.model.quant_gpu), the CPU's int8
path requantizes the dequantized rows to int8 groups of 32 (not exact: FP8 spans more than 127 steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.errors import ModelLoadError


@dataclass
class Fp8Weight:
    """An [N, K] matrix as float8_e4m3fn w and fp32 scales: [N] per row, or [N / bn, K / bk] per block."""

    w: torch.Tensor
    scale: torch.Tensor
    block: tuple[int, int] | None = None  # (bn, bk) when the scales are per block
    input_scale: torch.Tensor | None = None  # static activation scale (activation_scheme: static)

    @property
    def shape(self) -> torch.Size:
        """The shape of the matrix it stands for."""
        return self.w.shape

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The matrix in `dtype`, computed in fp32."""
        if self.block is None:
            return (self.w.float() * self.scale[:, None]).to(dtype)
        bn, bk = self.block
        n, k = self.w.shape
        full = self.scale.repeat_interleave(bn, 0)[:n].repeat_interleave(bk, 1)[:, :k]
        return (self.w.float() * full).to(dtype)

    def __getitem__(self, index: slice | tuple[slice, slice]) -> Fp8Weight | torch.Tensor:
        """A slice of rows (and columns); a cut through a scale block returns the dequantized slice."""
        rows, cols = index if isinstance(index, tuple) else (index, slice(None))
        if self.block is None:
            return Fp8Weight(self.w[rows, cols], self.scale[rows], None, self.input_scale)
        (r0, r1, _), (c0, c1, _) = rows.indices(self.shape[0]), cols.indices(self.shape[1])
        bn, bk = self.block
        if r0 % bn or c0 % bk or (r1 % bn and r1 != self.shape[0]) or (c1 % bk and c1 != self.shape[1]):
            return self.dequantize()[rows, cols]
        blocks = self.scale[r0 // bn : -(-r1 // bn), c0 // bk : -(-c1 // bk)]
        return Fp8Weight(self.w[rows, cols], blocks, self.block, self.input_scale)


def fp8_weight(w: torch.Tensor, scale: torch.Tensor, input_scale: torch.Tensor | None, block: tuple[int, int] | None,
               name: str) -> Fp8Weight:
    """One linear's FP8 tensors as an Fp8Weight; the scale layout is read from its shape (and the config's block)."""
    if w.dtype != torch.float8_e4m3fn or w.dim() != 2:
        raise ModelLoadError(f"{name}: FP8 weight must be a 2-D float8_e4m3fn tensor, got {w.dtype} {tuple(w.shape)}")
    n, k = w.shape
    scale = scale.float()
    if scale.numel() == 1:
        return Fp8Weight(w, scale.reshape(1).expand(n).contiguous(), None, input_scale)
    if scale.numel() == n and (scale.dim() == 1 or scale.shape[1] == 1):
        return Fp8Weight(w, scale.reshape(n).contiguous(), None, input_scale)
    if scale.dim() == 2:
        bn, bk = block or (-(-n // scale.shape[0]), -(-k // scale.shape[1]))
        if (-(-n // bn), -(-k // bk)) == tuple(scale.shape):
            return Fp8Weight(w, scale.contiguous(), (bn, bk), input_scale)
    raise ModelLoadError(f"{name}: FP8 scale of shape {tuple(scale.shape)} fits neither a tensor, "
                         f"its {n} rows, nor blocks of {tuple(w.shape)}")
