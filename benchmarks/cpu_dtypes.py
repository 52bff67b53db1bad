"""Offline decode tok/s of each --dtype on each CPU class, all on this machine: ISA caps stand in for the CPUs.

    .venv/bin/python benchmarks/cpu_dtypes.py [--batch 1 16] [--steps 16]

Each cell runs benchmarks/step_breakdown.py in a child process whose oneDNN, ATen and inductor kernels are
capped at one CPU class (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS): what such a CPU
refuses is refused, and what it runs runs with its instructions. Memory bandwidth, caches and clock stay this
machine's, so compare rows of one run, not with a real CPU of that class.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

STEP_BREAKDOWN = Path(__file__).with_name("step_breakdown.py")
# CPU class -> caps; "this CPU" leaves everything as it is.
CPU_CLASSES = {
    "this CPU": {},
    "AVX-512 without BF16": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "ATEN_CPU_CAPABILITY": "avx512"},
    "AVX2 only": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}
DTYPES = ("float32", "bfloat16", "float16")


def decode_rates(caps: dict[str, str], dtype: str, batches: list[int], steps: int) -> list[float]:
    """tok/s per batch size, from one step_breakdown.py run under `caps`."""
    # Inductor's cache key leaves out the ISA it compiled for: one cache per class, or kernels cross over.
    cache = os.path.join(tempfile.gettempdir(), "torchinductor_" + (caps.get("ATEN_CPU_CAPABILITY") or "native"))
    env = {**os.environ, **caps, "TORCHINDUCTOR_CACHE_DIR": cache}
    out = subprocess.run([sys.executable, str(STEP_BREAKDOWN), "--dtype", dtype, "--batch", *map(str, batches),
                          "--steps", str(steps), "--profile-steps", "1"], env=env, capture_output=True, text=True,
                         check=True).stdout
    return [float(x) for x in re.findall(r"^decode: ([\d.]+) tok/s", out, re.M)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--steps", type=int, default=16)
    args = parser.parse_args()
    print("| CPU class | " + " | ".join(f"{d} x{b}" for d in DTYPES for b in args.batch) + " |")
    print("|---" * (1 + len(DTYPES) * len(args.batch)) + "|")
    for name, caps in CPU_CLASSES.items():
        cells = [f"{r:.1f}" for d in DTYPES for r in decode_rates(caps, d, args.batch, args.steps)]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
