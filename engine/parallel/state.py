"""The tensor-parallel group of this process: rank, size, and the collectives the layers use.

Size 1 (the default) needs no torch.distributed at all, and every collective is a no-op, so a
single-process engine runs exactly the code it ran before tensor parallelism existed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# How long a collective inside a step may wait for a peer before it fails (a hung rank).
DEFAULT_TIMEOUT = timedelta(seconds=120)
# Workers wait on the metadata group for the next step however long the server stays idle;
# a dead rank 0 still ends them at once (its sockets close, and PR_SET_PDEATHSIG).
IDLE_TIMEOUT = timedelta(days=365)


@dataclass
class ParallelState:
    """This process's place in the group; `device_group` carries tensors, `cpu_group` step metadata."""

    rank: int = 0
    world_size: int = 1
    device_group: dist.ProcessGroup | None = None
    cpu_group: dist.ProcessGroup | None = None


_state = ParallelState()


def tp_rank() -> int:
    """This process's rank in the tensor-parallel group (0 without one)."""
    return _state.rank


def tp_size() -> int:
    """Number of ranks in the tensor-parallel group (1 without one)."""
    return _state.world_size


def cpu_group() -> dist.ProcessGroup | None:
    """The gloo group for step metadata (None at size 1)."""
    return _state.cpu_group


def init_tensor_parallel(rank: int, world_size: int, init_method: str, device: torch.device,
                         timeout: timedelta = DEFAULT_TIMEOUT) -> None:
    """Join the group: NCCL for CUDA tensors (gloo on CPU), plus a gloo group for metadata."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size, timeout=timeout)
    _state.rank, _state.world_size = rank, world_size
    _state.device_group = dist.group.WORLD
    _state.cpu_group = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)


def destroy_tensor_parallel() -> None:
    """Leave the group (safe to call when never joined)."""
    global _state
    if dist.is_initialized():
        dist.destroy_process_group()
    _state = ParallelState()


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum x over the ranks, in place; returns x."""
    if _state.world_size > 1:
        dist.all_reduce(x, group=_state.device_group)
    return x


def gather_last_dim(x: torch.Tensor) -> torch.Tensor | None:
    """Concatenate each rank's x along the last dimension on rank 0; other ranks get None."""
    if _state.world_size == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(_state.world_size)] if _state.rank == 0 else None
    dist.gather(x, parts, dst=0, group=_state.device_group)
    return torch.cat(parts, dim=-1) if parts is not None else None
