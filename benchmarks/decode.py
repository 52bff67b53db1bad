"""Load time and single-sequence decode speed of a model (default: the embedded SmolLM2) on CPU.

    .venv/bin/python benchmarks/decode.py [--model PATH] [--tokens 128] [--tensor-parallel-size N]
        [--quantization none int8 fp16] [--rounds 3] [--compile]

With several --quantization modes, one engine per mode is loaded and they take turns, one timed
sequence each per round, so that other jobs on the machine slow them alike; the median is printed.
"""

from __future__ import annotations

import argparse
import statistics
import time

from engine import LLM, SamplingParams
from engine.config import QUANTIZATION_MODES

PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]


def decode_once(llm: LLM, tokens: int) -> tuple[float, float]:
    """(prefill + first token ms, decode tok/s) of one greedy sequence."""
    engine = llm.engine
    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    engine.add_request(f"bench-{time.monotonic_ns()}", llm.tokenizer.apply_chat_template(PROMPT), params)
    first = None
    start = time.perf_counter()
    generated = 0
    while engine.has_unfinished():
        for out in engine.step():
            generated += len(out.outputs[0].token_ids)
            if first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    return (first - start) * 1000, (generated - 1) / (end - first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--quantization", nargs="+", default=["none"], choices=QUANTIZATION_MODES)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="the decoder layers under torch.compile")
    args = parser.parse_args()

    llms, load_s = {}, {}
    for mode in args.quantization:
        start = time.perf_counter()
        llms[mode] = LLM(model=args.model, device=args.device, progress=False,
                         tensor_parallel_size=args.tensor_parallel_size, quantization=mode,
                         compile=args.compile)
        load_s[mode] = time.perf_counter() - start
        llms[mode].chat(PROMPT, SamplingParams(max_tokens=4, temperature=0.0))  # warm-up
    runs: dict[str, list[tuple[float, float]]] = {mode: [] for mode in llms}
    for _ in range(args.rounds):
        for mode, llm in llms.items():
            runs[mode].append(decode_once(llm, args.tokens))
    base = statistics.median(tps for _, tps in runs[args.quantization[0]])
    for mode, llm in llms.items():
        engine = llm.engine
        tps = statistics.median(t for _, t in runs[mode])
        print(f"model: {engine.model_path.name}  dtype: {engine.dtype}  device: {args.device}  "
              f"tensor_parallel_size: {args.tensor_parallel_size}  quantization: {mode}")
        print(f"  load: {load_s[mode]:.2f} s   prefill+first token: {statistics.median(f for f, _ in runs[mode]):.0f} ms")
        print(f"  decode: {tps:.1f} tok/s over {args.tokens} tokens (one sequence, median of {args.rounds}; "
              f"{tps / base:.2f}x {args.quantization[0]})")
        engine.shutdown()


if __name__ == "__main__":
    main()
