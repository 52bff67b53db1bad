"""Decode speed when the context is long: where the attention path, not the weights, sets the pace.

    .venv/bin/python benchmarks/long_context.py [--prompt-tokens 400] [--output-tokens 300 200] [--batch 1 16]
    .venv/bin/python benchmarks/long_context.py --batch 16 --output-tokens 1 [--compile]   # prefill speed

Offline (LLM.generate, greedy, ignore_eos) on the embedded default: B prompts of --prompt-tokens ids each
(distinct, so no prefix cache hits). Prints the engine's start-up time (model load, weight packing and,
with --compile, compiling), then per batch the prompt and output tokens per second of the whole
generate call (prefill included).
"""

from __future__ import annotations

import argparse
import time

from engine import LLM, SamplingParams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--prompt-tokens", type=int, default=400)
    parser.add_argument("--output-tokens", type=int, nargs="+", default=[300, 200], help="one per --batch entry")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--compile", action="store_true", help="the engine's --compile")
    args = parser.parse_args()
    start = time.perf_counter()
    llm = LLM(model=args.model, progress=False, compile=args.compile)
    print(f"engine start: {time.perf_counter() - start:.1f} s")
    llm.generate(prompt_token_ids=[[100] * 8], sampling_params=SamplingParams(max_tokens=2))  # warm-up
    for batch, tokens in zip(args.batch, args.output_tokens, strict=True):
        prompts = [list(range(100 + i, 100 + i + args.prompt_tokens)) for i in range(batch)]
        params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
        start = time.perf_counter()
        outputs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
        seconds = time.perf_counter() - start
        generated = sum(len(o.outputs[0].token_ids) for o in outputs)
        print(f"batch {batch}, context {args.prompt_tokens}-{args.prompt_tokens + tokens}: "
              f"{batch * args.prompt_tokens / seconds:.0f} prompt tok/s, {generated / seconds:.1f} output tok/s")


if __name__ == "__main__":
    main()
