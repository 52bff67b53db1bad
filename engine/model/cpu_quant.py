"""The CPU's weight-only 8- and 16-bit matmul kernels (engine/model/cpu_quant_kernels.cpp), built once.

torch's extension loader compiles the C++ file on first use (~20 s, then cached under
TORCH_EXTENSIONS_DIR) where `engine.cpu_features.quant_kernel_path` says this CPU and toolchain can
run it; anywhere else, or if the build fails, `cpu_quant_ops()` is None and quantized layers serve
their weights dequantized instead (engine.model.quant). The ops are ordinary torch ops with fake
implementations, so torch.compile traces through them.
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import ModuleType

import torch

from engine.cpu_features import load_cpu_kernels, quant_kernel_path

SOURCE = Path(__file__).with_name("cpu_quant_kernels.cpp")


@functools.cache
def _build() -> bool:
    """Compile and load the kernels into torch.ops.exaone_cpu; False (with a warning) when that fails."""
    if not load_cpu_kernels("exaone_cpu_quant", SOURCE):
        return False
    _register_fakes()
    return True


def _register_fakes() -> None:
    @torch.library.register_fake("exaone_cpu::int8_linear")
    def _(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        return x.new_empty(*x.shape[:-1], q.shape[0])

    @torch.library.register_fake("exaone_cpu::int8_x8_linear")
    def _(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        return x.new_empty(*x.shape[:-1], q.shape[0] * 8)  # rows interleaved 8 wide (quant.InterleavedWeight)

    @torch.library.register_fake("exaone_cpu::int8_dequantize")
    def _(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        return scale.new_empty(q.shape[0] * 8, q.shape[1] // (4 if q.dtype == torch.uint8 else 8))

    @torch.library.register_fake("exaone_cpu::fp16_linear")
    def _(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x.new_empty(*x.shape[:-1], w.shape[0])


def cpu_quant_ops() -> ModuleType | None:
    """torch.ops.exaone_cpu (int8_linear, int8_x8_linear, int8_dequantize, fp16_linear) where this CPU runs them, else None."""
    if not quant_kernel_path()[0] or not _build():
        return None
    return torch.ops.exaone_cpu
