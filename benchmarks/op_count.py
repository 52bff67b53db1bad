"""ATen ops run by decode steps of one sequence: a load-independent way to compare two engine versions.

    .venv/bin/python benchmarks/op_count.py [--model PATH] [--steps 8] [--tensor-parallel-size N]

Wall-clock timings on a shared CPU swing with other jobs; the list of ops a step runs does not.
"""

from __future__ import annotations

import argparse
from collections import Counter

from torch.profiler import ProfilerActivity, profile

from engine import LLM, SamplingParams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    args = parser.parse_args()
    # the argument only when asked for, so the script also runs at commits before tensor parallelism
    tp = {"tensor_parallel_size": args.tensor_parallel_size} if args.tensor_parallel_size > 1 else {}
    llm = LLM(model=args.model, progress=False, **tp)
    engine = llm.engine
    params = SamplingParams(max_tokens=args.steps + 4, temperature=0.0, ignore_eos=True)
    engine.add_request("ops", list(range(100, 140)), params)
    engine.step()  # prefill
    engine.step()  # first decode: warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            engine.step()
    ops = Counter(e.name for e in prof.events() if e.name.startswith("aten::"))
    print(f"{sum(ops.values())} ATen ops in {args.steps} decode steps")
    for name, count in sorted(ops.items()):
        print(f"{name} {count}")


if __name__ == "__main__":
    main()
