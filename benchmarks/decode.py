"""Load time and single-sequence decode speed of a model (default: the embedded SmolLM2) on CPU.

    .venv/bin/python benchmarks/decode.py [--model PATH] [--tokens 128] [--tensor-parallel-size N]
"""

from __future__ import annotations

import argparse
import time

from engine import LLM, SamplingParams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    args = parser.parse_args()

    start = time.perf_counter()
    llm = LLM(model=args.model, device=args.device, progress=False, tensor_parallel_size=args.tensor_parallel_size)
    load_s = time.perf_counter() - start

    prompt = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]
    params = SamplingParams(max_tokens=args.tokens, temperature=0.0, ignore_eos=True)
    llm.chat(prompt, SamplingParams(max_tokens=4, temperature=0.0))  # warm-up
    engine = llm.engine
    engine.add_request("bench", llm.tokenizer.apply_chat_template(prompt), params)
    first = None
    start = time.perf_counter()
    generated = 0
    while engine.has_unfinished():
        for out in engine.step():
            generated += len(out.outputs[0].token_ids)
            if first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    decode_tps = (generated - 1) / (end - first)
    print(f"model: {engine.model_path.name}  dtype: {engine.dtype}  device: {args.device}  "
          f"tensor_parallel_size: {args.tensor_parallel_size}")
    print(f"load: {load_s:.2f} s   prefill+first token: {(first - start) * 1000:.0f} ms")
    print(f"decode: {decode_tps:.1f} tok/s over {generated} tokens (one sequence)")
    engine.shutdown()


if __name__ == "__main__":
    main()
