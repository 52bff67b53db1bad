"""Project-wide fixtures: tiny random-weight HF checkpoints and the embedded default GGUF."""

from __future__ import annotations

import os
from pathlib import Path

import torch

# Triton kernels run on the CPU through Triton's interpreter; it is chosen when a kernel is decorated,
# so before any test module imports kernels/.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
from fixtures_models import TINY_KINDS, make_tiny_model

from engine.loader import default_model_path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny checkpoint per kind, written once per test session."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {kind: make_tiny_model(root, kind) for kind in TINY_KINDS}


@pytest.fixture(scope="session")
def default_gguf() -> Path:
    """The embedded default checkpoint (SmolLM2-135M-Instruct Q4_1)."""
    return default_model_path()
