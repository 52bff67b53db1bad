"""Run a function on a 2-rank gloo group: rank 0 in this process, rank 1 in a spawned one."""

from __future__ import annotations

import multiprocessing as mp
import sys
import tempfile
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch

from engine.parallel.state import destroy_tensor_parallel, init_tensor_parallel

TIMEOUT = timedelta(seconds=60)


def _rank1(fn: Callable[[int], Any], init_method: str) -> None:
    torch.set_num_threads(1)
    try:
        init_tensor_parallel(1, 2, init_method, torch.device("cpu"), TIMEOUT)
        fn(1)
        destroy_tensor_parallel()
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        sys.exit(1)


def run_on_two_ranks(fn: Callable[[int], Any]) -> Any:
    """fn(rank) on both ranks, one OpenMP thread each; returns rank 0's result, fails if rank 1 fails."""
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        init_method = f"file://{tmp}/rendezvous"
        worker = mp.get_context("spawn").Process(target=_rank1, args=(fn, init_method), daemon=True)
        worker.start()
        torch.set_num_threads(1)
        try:
            init_tensor_parallel(0, 2, init_method, torch.device("cpu"), TIMEOUT)
            result = fn(0)
        finally:
            destroy_tensor_parallel()
            torch.set_num_threads(threads)
            worker.join(timeout=TIMEOUT.total_seconds())
            if worker.is_alive():
                worker.kill()
    assert worker.exitcode == 0, f"rank 1 failed with exit code {worker.exitcode} (its traceback is above)"
    return result
