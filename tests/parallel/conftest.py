"""Tensor-parallel tests compare against transformers with the engine tests' reference helpers."""

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1] / "engine"))  # for `reference`
