"""Forcing the CPU feature checks' "not supported" answers, in this process or in a child process."""

from __future__ import annotations

import os
import tempfile

import pytest

from engine import cpu_features
from engine.cpu_features import CpuFeatures

# A CPU with AVX2 and FMA only (most laptops, many cloud VMs): no AVX-512, so no oneDNN bf16.
AVX2_ONLY = CpuFeatures(isa="AVX2", onednn=True, onednn_bf16=False, avx512_bf16=False, amx=False, vnni=False,
                        avx2=True)



def avx2_only_env() -> dict[str, str]:
    """The environment of a child process that runs as an AVX2-only machine on any x86 CPU.

    oneDNN and ATen (and inductor, which follows ATEN_CPU_CAPABILITY) cap their kernels at AVX2 and refuse
    what such a CPU refuses. Inductor gets a cache of its own: its cache key leaves out the ISA it picked, so
    a shared cache hands AVX-512 kernels to the AVX2 process and AVX2 kernels back (both abort, seen with
    torch 2.13.0).
    """
    return {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
            "MKL_ENABLE_INSTRUCTIONS": "AVX2",
            "TORCHINDUCTOR_CACHE_DIR": os.path.join(tempfile.gettempdir(), "torchinductor_avx2_only")}


def force_cpu(monkeypatch: pytest.MonkeyPatch, features: CpuFeatures) -> None:
    """Make every CPU path choose as if this process ran on `features`."""
    monkeypatch.setattr(cpu_features, "cpu_features", lambda: features)
