"""AWQ's and GPTQ's packed 4-bit weights read into QuantizedWeight, exactly.

Both store, for a linear layer y = x W^T with W [N out, K in], 4-bit codes q in int32 words (8 per word),
one fp16 scale s and one 4-bit zero z per group of `group_size` input columns, W = (q - z) * s. That is
QuantizedWeight's q * scale + offset with offset = -z * s per group, and it is exact in fp32: (q - z) * s
has at most 16 significant bits. The packings differ (vLLM's awq.py / gptq.py):
- AutoAWQ GEMM: qweight [K, N/8], qzeros [K/group, N/8], scales [K/group, N]; word j holds output columns
  8j..8j+7 in the interleaved order [0, 2, 4, 6, 1, 3, 5, 7] (nibble i is column order[i]).
- GPTQ: qweight [K/8, N] packed along K in order, qzeros [K/group, N/8] packed along N in order, scales
  [K/group, N], g_idx [K] each input column's group. v1 checkpoints (AutoGPTQ's `gptq` format) store
  zero - 1. With act-order (desc_act) g_idx is not k // group: columns of one group are scattered.
"""

from __future__ import annotations

import torch

from engine.errors import ModelLoadError
from engine.model.quant import QuantizedWeight

# AWQ's nibble of each output column within a word: the inverse of its pack order [0, 2, 4, 6, 1, 3, 5, 7]
AWQ_NIBBLE_OF_COLUMN = (0, 4, 1, 5, 2, 6, 3, 7)
SEQUENTIAL = tuple(range(8))


def unpack_last_dim(packed: torch.Tensor, nibble_of: tuple[int, ...]) -> torch.Tensor:
    """[..., C/8] int32 words -> [..., C] codes 0..15 (int8), column c of a word taken from nibble nibble_of[c]."""
    shifts = torch.tensor(nibble_of, dtype=torch.int32) * 4
    codes = (packed.to(torch.int32)[..., None] >> shifts) & 0xF
    return codes.reshape(*packed.shape[:-1], -1).to(torch.int8)


def _quantized(q_nk: torch.Tensor, zeros_gn: torch.Tensor, scales_gn: torch.Tensor) -> QuantizedWeight:
    scale = scales_gn.T.float().contiguous()
    return QuantizedWeight(q_nk.contiguous(), scale, (-zeros_gn.T.float() * scale).contiguous())


def awq_weight(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor) -> QuantizedWeight:
    """One AutoAWQ GEMM linear's tensors as a QuantizedWeight [N, K] (groups of K from the tensors' shapes)."""
    q_kn = unpack_last_dim(qweight, AWQ_NIBBLE_OF_COLUMN)
    zeros = unpack_last_dim(qzeros, AWQ_NIBBLE_OF_COLUMN)
    if zeros.shape != scales.shape or q_kn.shape[1] != scales.shape[1] or q_kn.shape[0] % scales.shape[0]:
        raise ModelLoadError(f"AWQ tensors disagree: qweight {tuple(qweight.shape)}, qzeros {tuple(qzeros.shape)}, "
                             f"scales {tuple(scales.shape)}")
    return _quantized(q_kn.T, zeros, scales)


def gptq_weight(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor | None,
                zero_offset: int, refuse_act_order: bool, name: str) -> QuantizedWeight | torch.Tensor:
    """One GPTQ linear as a QuantizedWeight [N, K]; act-order weights (g_idx not k // group: their groups are
    not column runs) come dequantized in fp32, or are refused with refuse_act_order (the CPU's int8 mode)."""
    k = qweight.shape[0] * 8
    q_nk = unpack_last_dim(qweight.T, SEQUENTIAL)  # [N, K]: GPTQ packs K, so unpack the transpose
    zeros = unpack_last_dim(qzeros, SEQUENTIAL).to(torch.int16) + zero_offset  # [G, N]
    groups = scales.shape[0]
    if zeros.shape != scales.shape or q_nk.shape[0] != scales.shape[1] or k % groups:
        raise ModelLoadError(f"GPTQ tensors of {name} disagree: qweight {tuple(qweight.shape)}, "
                             f"qzeros {tuple(qzeros.shape)}, scales {tuple(scales.shape)}")
    in_order = torch.arange(k) // (k // groups)
    if g_idx is None or torch.equal(g_idx.long(), in_order):
        return _quantized(q_nk, zeros, scales)
    if refuse_act_order:
        raise ModelLoadError(f"{name}: GPTQ act-order (desc_act) weights scatter each group over the input "
                             "columns, so they do not load into int8 groups; run with --quantization none "
                             "(dequantized to fp32, exact)")
    g = g_idx.long()
    return (q_nk.float() - zeros.T.float()[:, g]) * scales.T.float()[:, g]
