"""The backend a run uses, by name: imports the Triton backend (and triton) only when it is chosen."""

from __future__ import annotations

import torch

from engine.attention.backend import AttentionBackend
from engine.attention.torch_backend import TorchAttentionBackend

BACKENDS = ("auto", "torch", "triton")


def make_attention_backend(name: str, device: torch.device, num_heads: int, head_dim: int,
                           max_num_seqs: int) -> AttentionBackend:
    """The backend `name` picks: auto is triton on CUDA and torch elsewhere."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "torch" or (name == "auto" and device.type != "cuda"):
        return TorchAttentionBackend()
    from engine.attention.triton_backend import TritonAttentionBackend  # imports triton only when chosen

    return TritonAttentionBackend(device, num_heads, head_dim, max_num_seqs)
