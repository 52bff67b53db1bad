"""Forcing the CPU feature checks' "not supported" answers, in this process or in a child process."""

from __future__ import annotations

import pytest

from engine import cpu_features
from engine.cpu_features import CpuFeatures

# A CPU with AVX2 and FMA only (most laptops, many cloud VMs): no AVX-512, so no oneDNN bf16.
AVX2_ONLY = CpuFeatures(isa="AVX2", onednn=True, onednn_bf16=False, avx512_bf16=False, amx=False, vnni=False)

# A child process with these variables runs as an AVX2-only machine on any x86 CPU: oneDNN and ATen (and
# inductor, which follows ATEN_CPU_CAPABILITY) cap their kernels at AVX2 and refuse what such a CPU refuses.
AVX2_ONLY_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def force_cpu(monkeypatch: pytest.MonkeyPatch, features: CpuFeatures) -> None:
    """Make every CPU path choose as if this process ran on `features`."""
    monkeypatch.setattr(cpu_features, "cpu_features", lambda: features)
