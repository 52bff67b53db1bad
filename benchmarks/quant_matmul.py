"""8- and 16-bit CPU matmul candidates at the default model's shapes (issue 23).

    PYTHONPATH=. .venv/bin/python benchmarks/quant_matmul.py [--rows 1 16] [--runs 30]

Per shape and row count, median (and min) ms, the candidates taking turns, of: the oneDNN-packed fp32 weight (the engine's path before issue 23),
fbgemm's fp16 weights, fbgemm's dynamic W8A8 (per-tensor activation scales: unusable on this model, a
reference for speed only), torch's `_weight_int8pack_mm`, an inductor-generated dequantize-in-the-loop
int8 GEMV, and this project's AVX2 kernels (engine/model/cpu_quant_kernels.cpp: int8 weights with a
per-row or per-32-column scale, fp16 weights; fp32 activations; and the int8 mode's integer dots against
activations quantized per 32, on int8 and on packed 4-bit codes, rows interleaved 8 wide; and prefill's
path for larger batches: widen those weights, then fp32 GEMM). Enough copies of each weight are cycled that they come
from DRAM, as in serving. The max abs error of each against x @ W_deq^T is printed beside it.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from engine.model.cpu_quant import cpu_quant_ops
from engine.model.quant import InterleavedWeight, QuantizedWeight, pack_int4, quantize_int8

SHAPES = {"lm_head": (49152, 576), "gate_up": (1536 * 2, 576), "gate": (1536, 576), "o": (576, 576),
          "down": (576, 1536)}
DRAM_BYTES = 256 << 20  # cycle at least this much fp32 weight so nothing stays in the last-level cache


def interleaved_ms(candidates: dict[str, list[Callable[[], torch.Tensor]]], runs: int) -> dict[str, tuple[float, float]]:
    """(median, min) ms of each candidate, run in turn each round so that other jobs slow them alike."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for i in range(runs + 3):
        for name, fns in candidates.items():
            start = time.perf_counter()
            fns[i % len(fns)]()
            if i >= 3:
                times[name].append(time.perf_counter() - start)
    return {name: (sorted(t)[len(t) // 2] * 1e3, min(t) * 1e3) for name, t in times.items()}


def inductor_gemv(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Dequantize inside the reduction loop (inductor fuses the int8 load, the product and the sum)."""
    return (x[:, None, :] * q[None].float()).sum(-1) * scale


def candidates(n: int, k: int, rows: int, copies: int) -> dict[str, list[Callable[[], torch.Tensor]]]:
    ws = [torch.randn(n, k) * 0.02 for _ in range(copies)]
    x = torch.randn(rows, k)
    rows_q = [quantize_int8(w, k) for w in ws]
    qs = [(r.q, r.scale[:, 0].contiguous()) for r in rows_q]
    g32 = [quantize_int8(w) for w in ws]
    ops = cpu_quant_ops()
    compiled = torch.compile(inductor_gemv, dynamic=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        packed = [torch.ops.mkldnn._reorder_linear_weight(w) for w in ws]
        fp16 = [torch.ops.quantized.linear_prepack_fp16(w, None) for w in ws]
        w8a8 = [torch.ops.quantized.linear_prepack(torch.quantize_per_channel(
            w, s, torch.zeros_like(s, dtype=torch.long), 0, torch.qint8), None) for w, (_, s) in zip(ws, qs, strict=True)]
    out = {
        "packed fp32": [lambda p=p: torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [None], "") for p in packed],
        "fbgemm fp16": [lambda p=p: torch.ops.quantized.linear_dynamic_fp16(x, p) for p in fp16],
        "fbgemm W8A8": [lambda p=p: torch.ops.quantized.linear_dynamic(x, p, True) for p in w8a8],
        "int8pack_mm": [lambda q=q, s=s: torch._weight_int8pack_mm(x, q, s) for q, s in qs],
        "inductor int8": [lambda q=q, s=s: compiled(x, q, s) for q, s in qs],
    }
    own: dict[str, torch.Tensor] = {}  # candidates run on weights of their own: their reference weight
    if ops is not None:
        halves = [w.half() for w in ws]
        none = x.new_empty(0)
        out["ours int8 row"] = [lambda r=r: ops.int8_linear(x, r.q, r.scale, none) for r in rows_q]
        out["ours int8 g32"] = [lambda r=r: ops.int8_linear(x, r.q, r.scale, none) for r in g32]
        out["ours fp16"] = [lambda h=h: ops.fp16_linear(x, h) for h in halves]
        # the int8 mode's path: integer dots against activations quantized per 32 (Q8_0), on int8 codes and on
        # 4-bit codes packed two per byte with Q4_1-style offsets (the default GGUF's layers), rows interleaved
        # 8 wide as served; and what batches past its row limit do: widen in C++, then fp32 GEMM
        q4 = [pack_int4(QuantizedWeight(torch.randint(0, 16, (n, k), dtype=torch.int8), g.scale, -8 * g.scale))
              for g in g32]
        il8, il4 = [InterleavedWeight.of(g) for g in g32], [InterleavedWeight.of(w) for w in q4]
        out["ours q8 x int8"] = [lambda w=w: ops.int8_x8_linear(x, w.q, w.scale, w.offset) for w in il8]
        out["ours q8 x 4bit"] = [lambda w=w: ops.int8_x8_linear(x, w.q, w.scale, w.offset) for w in il4]
        out["widen 4bit+GEMM"] = [lambda w=w: F.linear(x, ops.int8_dequantize(w.q, w.scale, w.offset)) for w in il4]
        own["ours q8 x 4bit"] = own["widen 4bit+GEMM"] = q4[0].dequantize()
    ref = F.linear(x, rows_q[0].dequantize())
    for name, fns in out.items():
        wanted = F.linear(x, own[name]) if name in own else F.linear(x, g32[0].dequantize()) if "g32" in name or "q8" in name else ref
        err = (fns[0]() - wanted).abs().max().item()
        print(f"  {name:14s} max |err| vs dequantized {err:.2e}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}")
    for name in args.shapes:
        n, k = SHAPES[name]
        copies = max(1, -(-DRAM_BYTES // (4 * n * k)))
        for rows in args.rows:
            print(f"{name} {n}x{k}, {rows} rows ({copies} weight copies):")
            timings = interleaved_ms(candidates(n, k, rows, copies), args.runs)
            base = timings["packed fp32"][0]
            for c, (med, low) in timings.items():
                print(f"  {c:14s} median {med:8.3f} ms ({base / med:5.2f}x)  min {low:8.3f} ms")


if __name__ == "__main__":
    main()
