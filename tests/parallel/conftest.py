"""Tensor-parallel tests compare against transformers with the engine tests' reference helpers, and
start servers with the server tests' harness."""

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path += [str(TESTS / "engine"), str(TESTS / "server")]  # for `reference` and `harness`
