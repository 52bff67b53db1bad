"""GGUF's 8- and 4-bit blocks read straight into QuantizedWeight (int8 + group scales), never via fp32.

Each block of 32 weights holds an fp16 scale d (and for Q4_1 an fp16 minimum m) and its codes:
Q8_0 w = d * q with q int8; Q4_0 w = d * (n - 8) and Q4_1 w = d * n + m with nibbles n, the low nibbles
of the block's 16 bytes first (ggml's layout). All three are exact in the int8 format.
"""

from __future__ import annotations

import gguf
import numpy as np
import torch

from engine.model.quant import QuantizedWeight

BLOCK = 32
# type -> bytes per block
KEPT_TYPES: dict[gguf.GGMLQuantizationType, int] = {
    gguf.GGMLQuantizationType.Q8_0: 2 + BLOCK,
    gguf.GGMLQuantizationType.Q4_0: 2 + BLOCK // 2,
    gguf.GGMLQuantizationType.Q4_1: 4 + BLOCK // 2,
}


def _nibbles(codes: np.ndarray) -> np.ndarray:
    return np.concatenate([codes & 0x0F, codes >> 4], axis=-1)


def gguf_blocks(data: np.ndarray, kind: gguf.GGMLQuantizationType, rows: int) -> QuantizedWeight:
    """The raw blocks of one 2-D tensor (`rows` rows) of a type in KEPT_TYPES, as a QuantizedWeight."""
    blocks = np.ascontiguousarray(data).reshape(rows, -1, KEPT_TYPES[kind])
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    offset = None
    if kind == gguf.GGMLQuantizationType.Q8_0:
        q = blocks[..., 2:].copy().view(np.int8)
    elif kind == gguf.GGMLQuantizationType.Q4_0:
        q = (_nibbles(blocks[..., 2:]).astype(np.int16) - 8).astype(np.int8)
    else:
        offset = torch.from_numpy(blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32))
        q = _nibbles(blocks[..., 4:]).astype(np.int8)
    return QuantizedWeight(torch.from_numpy(q.reshape(rows, -1)), torch.from_numpy(d), offset)
