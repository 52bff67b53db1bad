"""How far a lower-precision run drifts from fp32 on the same model: greedy tokens and logprobs.

    .venv/bin/python benchmarks/dtype_drift.py --dtype bfloat16 [--model PATH] [--prompts 16] [--tokens 64]

Both engines decode the same chat prompts greedily. Reported: prompts whose whole greedy output matches
fp32, the mean length of the matching prefix, and, over the tokens both runs chose identically (up to
the first divergence), the largest and mean absolute difference of the chosen token's logprob.
"""

from __future__ import annotations

import argparse
import statistics

from throughput import chat_prompts

from engine import LLM, SamplingParams


def greedy(llm: LLM, prompts: list[list[int]], tokens: int) -> list:
    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True, logprobs=0)
    return [out.outputs[0] for out in llm.generate(prompt_token_ids=prompts, sampling_params=params)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--model", default=None)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    fp32 = LLM(model=args.model, dtype="float32", progress=False)
    prompts = [fp32.engine.tokenizer.apply_chat_template(c) for c in chat_prompts(args.prompts)]
    reference = greedy(fp32, prompts, args.tokens)
    del fp32
    other = greedy(LLM(model=args.model, dtype=args.dtype, progress=False), prompts, args.tokens)
    same, prefixes, diffs = 0, [], []
    for ref, out in zip(reference, other, strict=True):
        n = next((i for i, (a, b) in enumerate(zip(ref.token_ids, out.token_ids, strict=True)) if a != b),
                 len(ref.token_ids))
        same += n == len(ref.token_ids)
        prefixes.append(n)
        diffs += [abs(a.logprob - b.logprob) for a, b in zip(ref.logprobs[:n], out.logprobs[:n], strict=True)]
    print(f"{args.dtype} vs float32, {args.prompts} prompts x {args.tokens} greedy tokens: "
          f"{same}/{args.prompts} outputs identical, mean matching prefix {statistics.mean(prefixes):.1f} tokens; "
          f"chosen-token logprob |diff| over the matching prefixes: max {max(diffs):.4f}, mean {statistics.mean(diffs):.4f}")


if __name__ == "__main__":
    main()
