"""Rules every Triton kernel keeps, checked on the source: 64-bit offsets and exact fp32 dot products."""

import ast
from pathlib import Path

import pytest
import torch

from exaone_kernels.attention import dot_input_precision

KERNELS = sorted((Path(__file__).resolve().parents[2] / "exaone_kernels").glob("*.py"))


def calls(tree: ast.AST, name: str) -> list[ast.Call]:
    """Every call of tl.<name>(...) in the tree."""
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr == name and isinstance(n.func.value, ast.Name) and n.func.value.id == "tl"]


@pytest.mark.parametrize("path", KERNELS, ids=lambda p: p.name)
def test_program_ids_are_widened_before_any_offset(path):
    """A program id is int32: times a row stride it wraps past 2**31 elements (the 32B's MLP rows at ~38.8K
    tokens), so every one is cast to int64 where it is read."""
    tree = ast.parse(path.read_text())
    widened = {id(n.func.value) for n in ast.walk(tree) if isinstance(n, ast.Call)
               and isinstance(n.func, ast.Attribute) and n.func.attr == "to" and ast.unparse(n.args) == "tl.int64"}
    bare = [ast.unparse(c) for c in calls(tree, "program_id") if id(c) not in widened]
    assert not bare, f"{path.name}: {bare} used as int32"


@pytest.mark.parametrize("path", KERNELS, ids=lambda p: p.name)
def test_dot_products_name_their_precision(path):
    """Triton's default for fp32 tl.dot on CUDA is TF32 (~1e-3 off): every dot says what it wants."""
    tree = ast.parse(path.read_text())
    assert all(any(k.arg == "input_precision" for k in c.keywords) for c in calls(tree, "dot"))


def test_fp32_dots_are_exact():
    assert dot_input_precision(torch.float32) == "ieee"
    assert dot_input_precision(torch.bfloat16) == "tf32"  # ignored for 16-bit inputs: Triton's default


def test_tests_run_the_kernels_in_the_interpreter_on_any_host():
    """The suite's tensors live on the CPU, so its kernels must be interpreted even where CUDA is present."""
    from triton.runtime.interpreter import InterpretedFunction

    from exaone_kernels import attention, cache, fused

    for kernel in (attention._paged_attention_kernel, cache._write_kv_kernel, fused._rms_norm_kernel):
        assert isinstance(kernel, InterpretedFunction)
