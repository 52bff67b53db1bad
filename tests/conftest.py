"""Project-wide fixtures: tiny random-weight HF checkpoints, the tiny EXAONE 4.0, the embedded default GGUF."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

# Triton kernels run through Triton's interpreter on every host, a GPU host too: the tests build CPU tensors
# (compiled kernels would get host pointers there); benchmarks/gpu_check.py is where kernels meet a GPU. The
# interpreter is chosen when a kernel is decorated, so before any test module imports exaone_kernels/.
os.environ["TRITON_INTERPRET"] = "1"

import pytest
from fixtures_exaone import make_exaone_model
from fixtures_models import TINY_KINDS, make_tiny_model

from engine.kv import sizing
from engine.model.loader import default_model_path

# Engines built in this process get a KV cache just large enough for one full-length sequence of the default
# model (8,192 tokens x 46 KiB in fp32) instead of serving's 1 GiB: the suite holds many engines at once.
TEST_KV_BYTES = 384 << 20


@pytest.fixture(scope="session", autouse=True)
def _small_default_kv_cache() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:  # session-wide, so module-scoped engines get it too
        patch.setattr(sizing, "CPU_DEFAULT_KV_BYTES", TEST_KV_BYTES)
        yield


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny checkpoint per kind, written once per test session."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {kind: make_tiny_model(root, kind) for kind in TINY_KINDS}


@pytest.fixture(scope="session")
def exaone_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random EXAONE 4.0 checkpoint with EXAONE's tokens and chat template (read only; shared)."""
    return str(make_exaone_model(tmp_path_factory.mktemp("exaone")))


@pytest.fixture(scope="session")
def default_gguf() -> Path:
    """The embedded default checkpoint (SmolLM2-135M-Instruct Q4_1)."""
    return default_model_path()
