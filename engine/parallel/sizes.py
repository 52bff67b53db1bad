"""How a model's dimensions split over a tensor-parallel group, checked before anything starts."""

from __future__ import annotations

from engine.config import ModelConfig


def kv_heads_per_rank(num_kv_heads: int, size: int) -> int:
    """KV heads each rank holds: a share of them, or one replicated head when there are more ranks."""
    return max(1, num_kv_heads // size)


def validate_tensor_parallel(cfg: ModelConfig, size: int) -> None:
    """Raise ValueError, in one line naming every dimension that does not split over `size` ranks."""
    if size < 1:
        raise ValueError(f"tensor_parallel_size must be at least 1, got {size}")
    problems = [f"{name} ({value})" for name, value in (
        ("attention heads", cfg.num_heads), ("intermediate_size", cfg.intermediate_size),
        ("vocab_size", cfg.vocab_size)) if value % size]
    kv = cfg.num_kv_heads
    if kv % size and size % kv:  # more ranks than KV heads: each head is replicated on size // kv ranks
        problems.append(f"KV heads ({kv}, or be a multiple of them)")
    if problems:
        raise ValueError(f"tensor_parallel_size {size} must divide this model's {', '.join(problems)}")
