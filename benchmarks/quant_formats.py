"""LG's quantized checkpoint formats on the CPU (issue 23): what reading them costs, and the int8 matmul they
land in, at EXAONE 4.0 1.2B's linear shapes.

    PYTHONPATH=. .venv/bin/python benchmarks/quant_formats.py [--runs 30]

Per shape: ms to turn one AWQ (group 128) and one FP8 (per-channel) layer into what `--quantization int8`
serves (AWQ: unpacked exactly into int8 codes + group scales/offsets; FP8: dequantized, requantized to int8
groups of 32) or `none` serves (fp32), then one-row matmul ms (median of --runs, weights cycled from DRAM) of
packed fp32 against the AVX2 int8 kernel on each format's groups.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from benchmarks.quant_matmul import DRAM_BYTES, interleaved_ms
from engine.model.cpu_quant import cpu_quant_ops
from engine.model.quant import quantize_int8
from engine.model.quant_formats.fp8 import fp8_weight
from engine.model.quant_formats.int4 import awq_weight

SHAPES = {"qkv": (2048 + 2 * 512, 2048), "gate_up": (2 * 4096, 2048), "down": (2048, 4096)}  # EXAONE 4.0 1.2B


def _once_ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    """Print one markdown table row per shape."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    ops = cpu_quant_ops()
    if ops is None:
        raise SystemExit("the AVX2 int8 kernels do not run here")
    torch.manual_seed(0)
    print("| shape (out x in) | AWQ -> int8 ms | FP8 -> int8 ms | AWQ -> fp32 ms | 1 row: packed fp32 | "
          "int8, AWQ groups of 128 + offsets | int8, groups of 32 (from FP8) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, (n, k) in SHAPES.items():
        qweight = torch.randint(-2**31, 2**31 - 1, (k, n // 8), dtype=torch.int32)
        qzeros = torch.randint(-2**31, 2**31 - 1, (k // 128, n // 8), dtype=torch.int32)
        scales = (torch.rand(k // 128, n) * 0.01).half()
        w8 = (torch.randn(n, k) * 20).to(torch.float8_e4m3fn)
        w_scale = torch.rand(n, 1) * 1e-3
        awq_ms = _once_ms(lambda: awq_weight(qweight, qzeros, scales))  # noqa: B023
        fp8_ms = _once_ms(lambda: quantize_int8(fp8_weight(w8, w_scale, None, None, "m").dequantize()))  # noqa: B023
        fp32_ms = _once_ms(lambda: awq_weight(qweight, qzeros, scales).dequantize())  # noqa: B023
        copies = max(1, DRAM_BYTES // (n * k * 4))
        awq = [awq_weight(qweight, qzeros, scales) for _ in range(copies)]
        q32 = [quantize_int8(a.dequantize()) for a in awq]
        packed = [torch.ops.mkldnn._reorder_linear_weight(a.dequantize()) for a in awq]
        x = torch.randn(1, k)
        none = x.new_empty(0)
        times = interleaved_ms({
            "fp32": [lambda p=p, x=x: torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [None], "")
                     for p in packed],
            "awq": [lambda a=a, x=x: ops.int8_linear(x, a.q, a.scale, a.offset) for a in awq],
            "q32": [lambda a=a, x=x, none=none: ops.int8_linear(x, a.q, a.scale, none) for a in q32],
        }, args.runs)
        cells = " | ".join(f"{times[c][0]:.3f}" for c in ("fp32", "awq", "q32"))
        print(f"| {name} {n} x {k} | {awq_ms:.0f} | {fp8_ms:.0f} | {fp32_ms:.0f} | {cells} |")


if __name__ == "__main__":
    main()
