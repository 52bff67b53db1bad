"""Decode step time with the CPU's three decode-attention paths: the gather + SDPA, the compiled in-place loop
and the C++ in-place kernel (engine.attention.cpu_decode).

    .venv/bin/python benchmarks/decode_attention.py [--shapes 1x40 16x256 16x500 64x128] [--rounds 2]

Offline, on the embedded default (or --model): for each BATCHxCONTEXT, BATCH prompts of CONTEXT distinct token
ids are prefilled, then decode steps are timed (2 warm-up steps, 8 timed), alternating the paths in one process
(`rounds` times each), so that the comparison does not depend on how this VM runs from one process to the
next. The compiled path is forced on for every shape (the engine takes it only for batches of 2+ decodes over at least
TorchAttentionBackend.COMPILED_DECODE_MIN_TOKENS cached tokens); the C++ kernel, where it runs, takes every fp32
decode in serving.
"""

from __future__ import annotations

import argparse
import itertools
import time

from engine import LLM, SamplingParams
from engine.attention.torch_backend import TorchAttentionBackend
from engine.core.llm_engine import LLMEngine

_ids = itertools.count()


def decode_step_ms(engine: LLMEngine, batch: int, context: int, steps: int = 8) -> float:
    """Mean time of one all-decode step of `batch` sequences at about `context` tokens."""
    params = SamplingParams(max_tokens=1000, temperature=0.0, ignore_eos=True)  # none ends while others prefill
    for i in range(batch):
        engine.add_request(f"r{next(_ids)}", list(range(100 + i, 100 + i + context)), params)
    while any(s.num_computed_tokens < context for seqs in engine.requests.values() for s in seqs):
        engine.step()
    for _ in range(2):
        engine.step()
    preemptions = engine.stats()["num_preemptions"]
    start = time.perf_counter()
    for _ in range(steps):
        engine.step()
    seconds = (time.perf_counter() - start) / steps
    stats = engine.stats()
    assert stats["running"] == batch and stats["num_preemptions"] == preemptions, (stats, batch, preemptions)
    for request_id in list(engine.requests):
        engine.abort(request_id)
    return seconds * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--shapes", nargs="+", default=["1x40", "16x256", "16x500", "64x128"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--kv-cache-memory", type=int, default=4 << 30, help="bytes")
    args = parser.parse_args()
    shapes = [tuple(map(int, shape.split("x"))) for shape in args.shapes]
    llm = LLM(model=args.model, progress=False, max_num_seqs=max(b for b, _ in shapes),
              kv_cache_memory=args.kv_cache_memory)
    attn = llm.engine.model.model.layers[0].self_attn
    backend, decode = attn.backend, attn.backend.in_place_decode
    paths = ["gather", "compiled"] + ["kernel"] * backend.cpu_kernel
    if not decode.ready:  # the engine compiles the loop only where the kernel does not serve
        decode.compile(llm.engine.runner.layer_caches[0], attn.num_heads, attn.scale)
    assert decode.ready, "the in-place decode does not compile here"
    TorchAttentionBackend.COMPILED_DECODE_MIN_TOKENS = 0
    for batch, context in shapes:
        times: dict[str, list[float]] = {path: [] for path in paths}
        for _ in range(args.rounds):
            for path in paths:
                backend.cpu_kernel = path == "kernel"
                decode.ready = path == "compiled"
                times[path].append(decode_step_ms(llm.engine, batch, context))
        row = ", ".join(f"{path} {' / '.join(f'{t:.1f}' for t in times[path])} ms" for path in paths)
        print(f"batch {batch}, context {context}: {row} per decode step")


if __name__ == "__main__":
    main()
