"""Speculative decoding by batch size: output tok/s with n-gram drafting on and off, on copy-heavy prompts and on
prompts that copy little, in one run; where drafting stops paying sets the CPU's disable_by_batch_size.

    .venv/bin/python benchmarks/spec_decode.py [--model PATH] [--batch-sizes 1,2,4,8] [--tokens 96]
"""

from __future__ import annotations

import argparse
import random
import time

from benchmarks.loadtest.scenarios import ScenarioOptions, build
from engine import LLM, SamplingParams

NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 2, "prompt_lookup_max": 4,
         "disable_by_batch_size": 1 << 20}  # draft at every batch size: the sweep finds where it pays


def prompts(llm: LLM, scenario: str, n: int) -> list[list[int]]:
    """n chat prompts of the load suite's scenario (the same on every run)."""
    rng = random.Random(0)
    bodies = [build(scenario, rng, ScenarioOptions("m"), frozenset()).body for _ in range(n)]
    return [llm.tokenizer.apply_chat_template(b["messages"], add_generation_prompt=True) for b in bodies]


def tok_per_s(llm: LLM, batch: list[list[int]], tokens: int) -> float:
    """Output tokens per second of one batch, generated together (greedy, the answers' own lengths)."""
    params = SamplingParams(max_tokens=tokens, temperature=0.0)
    start = time.perf_counter()
    outs = llm.generate(prompt_token_ids=batch, sampling_params=params)
    return sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    parser.add_argument("--tokens", type=int, default=96)
    args = parser.parse_args()
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    llms = {"off": LLM(model=args.model, progress=False, enable_prefix_caching=False),
            "ngram": LLM(model=args.model, progress=False, enable_prefix_caching=False, speculative_config=NGRAM)}
    print("| prompts | batch | off tok/s | n-gram tok/s | ratio | mean acceptance length |")
    print("|---|---|---|---|---|---|")
    for scenario in ("copy", "chat"):
        batch_all = prompts(llms["off"], scenario, max(sizes))
        for llm in llms.values():
            tok_per_s(llm, batch_all[:1], 8)  # warm-up
        for size in sizes:
            spec = llms["ngram"].engine.spec_decoder
            before = spec.metrics.as_dict()
            off = tok_per_s(llms["off"], batch_all[:size], args.tokens)
            on = tok_per_s(llms["ngram"], batch_all[:size], args.tokens)
            after = spec.metrics.as_dict()
            drafts = after["num_drafts"] - before["num_drafts"]
            acc = 1 + (after["num_accepted_tokens"] - before["num_accepted_tokens"]) / drafts if drafts else 0.0
            print(f"| {scenario} | {size} | {off:.1f} | {on:.1f} | {on / off:.2f} | {acc:.2f} |", flush=True)


if __name__ == "__main__":
    main()
