"""One GPU check of the Triton path: correctness first (kernels in bf16, CUDA-graph replay, attention at 128K),
then speed (attention bandwidth and FLOP/s, CUDA-graph decode, a 128K prefill of a 32B-shaped layer pair).

    python benchmarks/gpu_check.py             # a CUDA machine; a few minutes on an H200
    python benchmarks/gpu_check.py --dry-run   # tiny shapes on the CPU through Triton's interpreter

Correctness (benchmarks/gpu/correctness.py): (a) every kernel in bf16 against an fp32 torch reference;
(a2) decode logits of CUDA-graph replay against eager steps at batch 1 and 32, on a 3:1 hybrid model whose
ring has wrapped; (a3) attention at a 128K context, batch 2 (two decodes; a decode beside a prefill chunk),
global and ring layers, split-K forced on and off, against the torch backend in fp32. Any failed row makes
the script exit 1 (after every section has run). `--perturb 0.1` adds noise to the side under test: every
correctness row must then fail (a self-test of the check).
Speed (benchmarks/gpu/speed.py): (b) decode attention with EXAONE-4.0-32B's head layout as achieved GB/s beside
the same run's device copy bandwidth, and prefill attention TFLOP/s beside scaled_dot_product_attention (and
xformers when it imports); (c) decode steps of a random-weight EXAONE-4.0-1.2B-shaped model, eager vs CUDA
graphs, against the weight-streaming roofline; (d) one 32B-shaped layer pair (local + global) prefilling 128K
tokens in chunks.
Prints one table per section, then the block to paste into benchmarks/RESULTS.md, and writes gpu_check.json to
$OUT (or --out). Imports only torch, triton, numpy and this repository, so it runs where nothing else can be
installed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if "--dry-run" in sys.argv and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first kernel import

import triton

from benchmarks.gpu import correctness, speed
from benchmarks.gpu.common import DRY, Bench, Checker, Shapes, table

CORRECTNESS = ("a", "a2", "a3")  # sections whose rows carry "ok"


def main(argv: list[str] | None = None) -> dict:
    """Run the chosen sections; the report (also written as gpu_check.json) with "failed" rows listed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes (on the CPU: Triton's interpreter)")
    parser.add_argument("--sections", default="abcd", help="which of a, b, c, d to run (default all)")
    parser.add_argument("--perturb", type=float, default=0.0,
                        help="self-test: noise of this size relative to the reference on the side under test")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_check.json (default $OUT)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.dry_run:
        parser.error("no CUDA device: run with --dry-run to check the script on the CPU")
    s = DRY if args.dry_run else Shapes()
    bench, checker = Bench(device), Checker(args.perturb)
    started = time.perf_counter()
    copy_gbps = bench.copy_gbps(1 << 30 if device.type == "cuda" else 1 << 20)
    report: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (interpreter)",
                    "torch": torch.__version__, "triton": triton.__version__, "shapes": asdict(s),
                    "copy_GB/s": copy_gbps, "perturb": args.perturb}
    sections = {
        "a": ("(a) kernels in bf16 vs fp32 torch twins", lambda: correctness.check_accuracy(s, device, checker)),
        "a2": ("(a) decode logits, CUDA-graph replay vs eager, 3:1 hybrid",
               lambda: correctness.check_graph_replay(s, device, checker)),
        "a3": ("(a) attention at a long context vs the torch backend (fp32)",
               lambda: correctness.check_long_context(s, device, checker)),
        "b": ("(b) decode attention, GB/s vs copy", lambda: speed.bench_decode_attention(s, device, bench, copy_gbps)),
        "b2": ("(b) decode tile width sweep, global", lambda: speed.sweep_decode_tiles(s, device, bench, copy_gbps)),
        "b3": ("(b) prefill attention, TFLOP/s", lambda: speed.bench_prefill_attention(s, device, bench)),
        "c": ("(c) 1.2B-shaped decode, eager vs CUDA graphs",
              lambda: speed.bench_model_decode(s, device, bench, copy_gbps)),
        "d": ("(d) 32B-shaped layer pair, chunked prefill", lambda: speed.check_long_prefill(s, device, bench)),
    }
    print(f"device: {report['device']}  copy bandwidth: {copy_gbps:.1f} GB/s\n")
    tables = []
    for key, (title, run) in sections.items():
        if key[0] not in args.sections:
            continue
        t0 = time.perf_counter()
        report[key] = rows = run()
        tables.append(table(title, rows) + f"({time.perf_counter() - t0:.1f} s)\n")
        print(tables[-1], flush=True)
    report["seconds"] = time.perf_counter() - started
    report["failed"] = [f"{key}: {row}" for key in CORRECTNESS for row in report.get(key, []) if not row["ok"]]
    command = " ".join(["python benchmarks/gpu_check.py", *(sys.argv[1:] if argv is None else argv)])
    print(paste_block(report, command, tables))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    return report


def paste_block(report: dict, command: str, tables: list[str]) -> str:
    """What to paste under "Triton kernels and the GPU path" in benchmarks/RESULTS.md: command, machine, tables."""
    verdict = (f"{len(report['failed'])} correctness rows FAILED" if report["failed"]
               else "every correctness row passed")
    head = (f"`{command}` ({time.strftime('%Y-%m-%d')}; {report['device']}, torch {report['torch']}, "
            f"triton {report['triton']}; device copy {report['copy_GB/s']:.0f} GB/s; {report['seconds']:.0f} s): "
            f"{verdict}.")
    rule = "-" * 20
    return "\n".join([f"{rule} paste into benchmarks/RESULTS.md {rule}", "", head, "", *tables, rule * 3])


if __name__ == "__main__":
    if main()["failed"]:
        sys.exit(1)
