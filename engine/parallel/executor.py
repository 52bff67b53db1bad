"""Rank 0's side of a tensor-parallel group: spawn the workers, join the group, watch them, stop them."""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import torch
import torch.distributed as dist

from engine.errors import TensorParallelError
from engine.parallel.channel import Op, StepChannel
from engine.parallel.state import cpu_group, destroy_tensor_parallel, init_tensor_parallel
from engine.parallel.worker import WorkerSpec, exchange_num_blocks, worker_main
from engine.runner.model_runner import ModelRunner

logger = logging.getLogger(__name__)


def rank_devices(device: torch.device, size: int) -> list[torch.device]:
    """One device per rank: consecutive GPUs from rank 0's, or the CPU for every rank."""
    if device.type == "cpu":
        return [device] * size
    first = device.index or 0
    available = torch.cuda.device_count()
    if first + size > available:
        raise ValueError(f"tensor_parallel_size {size} needs GPUs {first}..{first + size - 1}; "
                         f"{available} are visible")
    return [torch.device("cuda", first + r) for r in range(size)]


class TensorParallelExecutor:
    """Spawns ranks 1..N-1 (one process per device), rendezvous through a private file (no fixed port,
    so two servers can share a host), and makes a dead worker loud: `failure` is set and `on_failure`
    is called at once. Build it on a thread that outlives it: workers get SIGKILL when that thread ends.
    """

    def __init__(self, size: int, spec: WorkerSpec, device: torch.device) -> None:
        devices = rank_devices(device, size)
        self.failure: str | None = None
        self.on_failure: Callable[[str], None] | None = None
        self.channel = StepChannel(list(spec.pools))
        self._closing = False
        self._threads_before = torch.get_num_threads()
        torch.set_num_threads(spec.num_threads)
        self._dir = tempfile.mkdtemp(prefix="exaone-tp-")
        init_method = f"file://{self._dir}/rendezvous"
        ctx = mp.get_context("spawn")
        self.workers = [
            ctx.Process(target=worker_main, name=f"exaone-tp-rank{rank}", daemon=True,
                        args=(rank, size, init_method, os.getpid(), replace(spec, device=str(devices[rank]))))
            for rank in range(1, size)
        ]
        for p in self.workers:
            p.start()
        atexit.register(self.shutdown)  # an offline LLM nobody shut down: stop workers before interpreter exit
        threading.Thread(target=self._watch, name="exaone-tp-watch", daemon=True).start()
        try:
            init_tensor_parallel(0, size, init_method, devices[0])
        except BaseException as e:
            message = self._explain(e)
            self.shutdown()
            raise TensorParallelError(message) from e

    def start(self, runner: ModelRunner) -> None:
        """Send rank 0's KV pool sizes, wait until every worker has its cache, then route steps to them."""
        try:
            exchange_num_blocks(self.channel.kinds, {k: p.num_blocks for k, p in runner.kv.pools.items()})
            dist.barrier(group=cpu_group())
        except RuntimeError as e:
            raise TensorParallelError(self._explain(e)) from e
        # Every rank is connected: the rendezvous file is not needed again, and a kill -9 later leaves nothing.
        shutil.rmtree(self._dir, ignore_errors=True)
        runner.channel = self.channel

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Around a step: refuse to start once a worker has died, and name the dead worker when a
        collective fails (gloo/NCCL only say that a connection broke)."""
        if self.failure is not None:
            raise TensorParallelError(self.failure)
        try:
            yield
        except RuntimeError as e:
            raise TensorParallelError(self._explain(e)) from e

    def shutdown(self) -> None:
        """Stop the workers (asking first, killing stragglers) and leave the group; idempotent."""
        if self._closing:
            return
        self._closing = True
        if self.failure is None and dist.is_initialized():
            with contextlib.suppress(RuntimeError):  # a worker already gone: the kill below covers it
                self.channel.send(Op.SHUTDOWN)
        for p in self.workers:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
        destroy_tensor_parallel()
        shutil.rmtree(self._dir, ignore_errors=True)
        torch.set_num_threads(self._threads_before)

    def _watch(self) -> None:
        by_sentinel = {p.sentinel: p for p in self.workers}
        ready = mp.connection.wait(list(by_sentinel))
        if self._closing:
            return
        p = by_sentinel[ready[0]]
        p.join(timeout=1)
        self.failure = (f"tensor-parallel worker {p.name} (pid {p.pid}) exited with code {p.exitcode}; "
                        "the engine cannot continue")
        logger.error(self.failure)
        if self.on_failure is not None:
            self.on_failure(self.failure)

    def _explain(self, error: BaseException) -> str:
        """A collective failed: say which worker died if one did (its exit is seen a moment later)."""
        deadline = time.monotonic() + 2
        while self.failure is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.failure or f"tensor-parallel collective failed: {error}"
