"""CPU matmul formats for the default model's shapes, a decode step's matmuls alone, and copy bandwidth.

    .venv/bin/python benchmarks/cpu_linear.py [--rows 1 16 64]

Per shape (cache-hot, median of 50): F.linear on fp32 (MKL), the oneDNN-packed fp32 weight the engine
uses on CPU, and F.linear in bf16. Then the 121 packed matmuls of one decode step of the real model
(30 layers' q/k/v, o, gate/up and down, plus the LM head), weights coming from DRAM as in serving.
Last, the one-stream floor: copying a tensor the size of the model's fp32 weights (median of 7),
bandwidth counted as STREAM does (bytes read + bytes written), and weight bytes / that bandwidth.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from engine import LLM

# out x in of the default model's linears (SmolLM2-135M: hidden 576, MLP 1536, 9/3 heads of 64)
SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536), "lm_head": (49152, 576)}


def median_ms(fn: Callable[[], object], runs: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[runs // 2] * 1e3


def shapes(rows: int) -> None:
    for name, (n, k) in SHAPES.items():
        w, x = torch.randn(n, k), torch.randn(rows, k)
        packed = torch.ops.mkldnn._reorder_linear_weight(w)
        wb, xb = w.bfloat16(), x.bfloat16()
        timings = {
            "F.linear": median_ms(lambda: F.linear(x, w), 50),  # noqa: B023
            "packed": median_ms(lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [None], ""), 50),  # noqa: B023
            "bf16": median_ms(lambda: F.linear(xb, wb), 50),  # noqa: B023
        }
        gflop = 2 * rows * n * k / 1e9
        print(f"rows {rows:3d} {name:8s} " + "  ".join(f"{k} {ms:7.3f} ms ({gflop / ms * 1e3:5.1f} GFLOP/s)"
                                                      for k, ms in timings.items()))


def step_matmuls(rows: int, llm: LLM) -> None:
    model = llm.engine.model
    layers = [(m, m.weight.shape[1] if m.packed is None else m.packed.shape[1])
              for layer in model.model.layers
              for m in (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj)]
    inputs = {k: torch.randn(rows, k) for _, k in layers}
    hidden = torch.randn(rows, model.cfg.hidden_size)

    def step() -> None:
        for module, k in layers:
            module.matmul(inputs[k])
        model.compute_logits(hidden)

    print(f"rows {rows:3d}: the {len(layers) + 1} matmuls of a decode step take {median_ms(step, 10):.1f} ms")


def copy_floor(llm: LLM) -> None:
    model = llm.engine.model
    weight_bytes = 4 * sum(p.numel() for p in model.parameters() if p.dim() == 2 and p.numel())
    weight_bytes += 4 * sum(m.out_features * m.packed.shape[1] for m in model.modules()
                            if getattr(m, "packed", None) is not None and m is not model.model.embed_tokens)
    x = torch.ones(weight_bytes // 4)  # written, so the copy reads real pages (not the shared zero page)
    y = torch.empty_like(x)
    ms = median_ms(lambda: y.copy_(x), 7)
    bandwidth = 2 * weight_bytes / ms / 1e6
    print(f"copy of {weight_bytes / 1e6:.0f} MB (the fp32 weights): {ms:.1f} ms, {bandwidth:.1f} GB/s read + write; "
          f"one-stream floor {weight_bytes / bandwidth / 1e6:.1f} ms per token")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16, 64])
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    for rows in args.rows:
        shapes(rows)
    llm = LLM(progress=False)
    for rows in args.rows:
        step_matmuls(rows, llm)
    copy_floor(llm)


if __name__ == "__main__":
    main()
