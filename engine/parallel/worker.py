"""A tensor-parallel worker process (ranks 1..N-1): load this rank's shards, then run steps in lockstep."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from engine.attention.selector import make_attention_backend
from engine.config import EngineConfig, ModelConfig
from engine.kv.kv_cache import KVCacheManager, PoolSpec
from engine.model.transformer import HybridTransformer
from engine.parallel.channel import Op, StepChannel
from engine.parallel.layers import ShardedLayer
from engine.parallel.state import cpu_group, destroy_tensor_parallel, init_tensor_parallel
from engine.runner.model_runner import ModelRunner

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass
class WorkerSpec:
    """What a worker needs to build the same model as rank 0 (sent once, at spawn)."""

    model_path: Path
    model_config: ModelConfig
    config: EngineConfig  # attention backend, batch sizes, block size, max_model_len
    dtype: torch.dtype
    device: str  # this rank's device: "cpu" or "cuda:N"
    pools: dict[str, PoolSpec]
    num_threads: int
    log_level: int


def worker_main(rank: int, world_size: int, init_method: str, parent_pid: int, spec: WorkerSpec) -> None:
    """Entry point of a spawned worker; returns when rank 0 says shut down, exits 1 on any error."""
    _die_with_parent(parent_pid)
    # Ctrl-C reaches the whole process group; rank 0 decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=spec.log_level, format=f"%(levelname)s rank {rank} %(name)s: %(message)s")
    torch.set_num_threads(spec.num_threads)
    device = torch.device(spec.device)
    try:
        init_tensor_parallel(rank, world_size, init_method, device)
        mcfg = spec.model_config
        with device:
            backend = make_attention_backend(spec.config.attention_backend, device, mcfg.num_heads, mcfg.head_dim,
                                             spec.config.max_running_seqs)
        model = HybridTransformer.from_checkpoint(spec.model_path, mcfg, backend, spec.dtype, device,
                                                  spec.config.max_model_len, quantization=spec.config.quantization)
        channel = StepChannel(list(spec.pools))
        kv = KVCacheManager(spec.pools, exchange_num_blocks(channel.kinds), spec.config.block_size,
                            spec.config.max_num_batched_tokens)
        runner = ModelRunner(model, kv, spec.dtype, device, spec.config)
        log_rank_memory(rank, world_size, device, model, runner)
        dist.barrier(group=cpu_group())  # tells rank 0 this rank is ready
        serve(channel, runner)
    except BaseException:
        logger.exception("tensor-parallel worker %d failed", rank)
        sys.stderr.flush()
        os._exit(1)
    destroy_tensor_parallel()


def serve(channel: StepChannel, runner: ModelRunner) -> None:
    """Run every message rank 0 sends until it sends SHUTDOWN."""
    while True:
        op, payload = channel.recv()
        if op == Op.SHUTDOWN:
            return
        if op == Op.COPY_BLOCKS:
            runner.copy_blocks(payload)
        else:
            runner.run(payload)


def exchange_num_blocks(kinds: list[str], num_blocks: dict[str, int] | None = None) -> dict[str, int]:
    """Rank 0 passes its KV pool sizes (from its budget); every rank gets the same ones back."""
    sizes = torch.tensor([num_blocks[k] for k in kinds] if num_blocks else [0] * len(kinds), dtype=torch.int64)
    dist.broadcast(sizes, 0, group=cpu_group())
    return dict(zip(kinds, sizes.tolist(), strict=True))


def weight_bytes(model: nn.Module) -> tuple[int, int]:
    """(all weight bytes the model holds, the part of them packed for oneDNN).

    A packed linear keeps its weight outside its parameters (which prepack empties), so parameters alone
    miss most of a packed model; a tied embedding counts twice, plain for the lookup and packed for the logits,
    as it is held twice."""
    plain = sum(p.numel() * p.element_size() for p in model.parameters())
    packed = sum(m.packed.numel() * m.packed.element_size() for m in model.modules()
                 if isinstance(m, ShardedLayer) and m.packed is not None)
    quantized = sum(m.quant_method.nbytes() for m in model.modules()  # --quantization: held by the method
                    if isinstance(m, ShardedLayer) and m.quant_method is not None)
    return plain + packed + quantized, packed


def log_rank_memory(rank: int, world_size: int, device: torch.device, model: HybridTransformer,
                    runner: ModelRunner) -> None:
    """One start-up line per rank: its device, its weights, its KV cache, and free device memory."""
    weights, packed = weight_bytes(model)
    cache = sum(c.numel() * c.element_size() for c in runner.caches.values())
    free = ""
    if device.type == "cuda":
        free_bytes, total = torch.cuda.mem_get_info(device)
        free = f", {free_bytes / 2**30:.1f} of {total / 2**30:.1f} GiB free"
    packed_note = f" ({packed / 2**20:.1f} MiB of it packed for oneDNN)" if packed else ""
    logger.info("rank %d/%d on %s: weights %.1f MiB%s, KV cache %.1f MiB (%s)%s", rank, world_size, device,
                weights / 2**20, packed_note, cache / 2**20,
                ", ".join(f"{k} {p.num_blocks} blocks" for k, p in runner.kv.pools.items()), free)


def _die_with_parent(parent_pid: int) -> None:
    """End this process when rank 0 dies, even by SIGKILL: PR_SET_PDEATHSIG on Linux, else a ppid watch."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (AttributeError, OSError):
        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    if os.getppid() != parent_pid:  # rank 0 died before the signal was armed
        os._exit(1)
