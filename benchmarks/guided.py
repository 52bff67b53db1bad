"""Cost of grammar-constrained decoding and of thinking-budget forcing, per output token.

    .venv/bin/python benchmarks/guided.py [--streams 16] [--tokens 64]

Runs the same 16 chat requests through the engine: free and with a response_format json_schema
grammar (xgrammar), at identical per-request lengths; then in reasoning mode without and with a
thinking budget that forces `</think>` (the embedded default model uses the generic `<think>`
fallback). Each pair twice; reports milliseconds per output token.
"""

from __future__ import annotations

import argparse
import time

from engine import LLM, SamplingParams
from engine.modes.chat_templates import render_chat_prompt, template_traits
from engine.modes.guided import GuidedDecoding
from engine.modes.reasoning import ReasoningConfig

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"},
                                           "landmarks": {"type": "array", "items": {"type": "string"}}},
          "required": ["city", "population", "landmarks"]}


def run(llm: LLM, prompts: list[list[int]], params: SamplingParams) -> None:
    llm.generate(prompt_token_ids=prompts, sampling_params=params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    llm = LLM(model=args.model, progress=False, max_num_seqs=args.streams)
    engine = llm.engine
    hf = engine.tokenizer.hf
    config = ReasoningConfig.from_tokenizer(hf, engine.model_config.vocab_size, engine.eos_token_ids)
    traits = template_traits(hf)
    cities = ["Paris", "Seoul", "Lima", "Oslo", "Cairo", "Kyoto", "Quito", "Perth"]
    messages = [[{"role": "user", "content": f"Describe {cities[i % 8]} as JSON with city, population, landmarks."}]
                for i in range(args.streams)]

    def prompts(thinking: bool) -> list[list[int]]:
        return [engine.tokenizer.encode(render_chat_prompt(hf, m, enable_thinking=thinking, traits=traits),
                                        add_special_tokens=False) for m in messages]

    grammar = GuidedDecoding(config).processor_factory(
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}})
    base = dict(max_tokens=args.tokens, temperature=0.0)
    run(llm, prompts(False), SamplingParams(**base, ignore_eos=True))  # warm-up: a full batch
    # The grammar ends each answer where its JSON ends; the free run then gets exactly those lengths,
    # so both runs have the same batch in every step and differ only by the constraint.
    guided = llm.generate(prompt_token_ids=prompts(False), sampling_params=SamplingParams(
        **base, logits_processor_factories=[grammar]))
    lengths = [len(o.outputs[0].token_ids) for o in guided]

    def timed(name: str, ids: list[list[int]], params: list[SamplingParams]) -> None:
        start = time.perf_counter()
        outs = llm.generate(prompt_token_ids=ids, sampling_params=params)
        seconds = time.perf_counter() - start
        tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        print(f"{name:>22}: {tokens:5d} tokens in {seconds:6.2f} s = {seconds / tokens * 1000:6.2f} ms/token")

    free_same = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in lengths]
    json_same = [SamplingParams(**base, logits_processor_factories=[grammar])] * len(lengths)
    budget = config.budget_processor_factory(16)
    for _ in range(2):
        timed("free", prompts(False), free_same)
        timed("json_schema", prompts(False), json_same)
        timed("reasoning", prompts(True), [SamplingParams(**base, ignore_eos=True)] * len(lengths))
        timed("reasoning, budget 16", prompts(True), [SamplingParams(
            **base, ignore_eos=True, logits_processor_factories=[budget])] * len(lengths))


if __name__ == "__main__":
    main()
