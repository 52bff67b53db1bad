"""Offline throughput: N chat prompts x M output tokens through the engine, or through transformers.

    .venv/bin/python benchmarks/throughput.py --max-num-seqs 32
    .venv/bin/python benchmarks/throughput.py --backend hf --batch-size 8
"""

from __future__ import annotations

import argparse
import threading
import time

import torch

TOPICS = ["the ocean", "a city at night", "mountains", "a robot", "the moon", "a library", "rain", "a market"]
STYLES = ["a short poem about", "a story about", "three facts about", "a letter describing", "a haiku about",
          "a dialogue about", "a recipe inspired by", "a news report on"]


def chat_prompts(n: int) -> list[list[dict]]:
    """n distinct single-turn conversations of varied length."""
    return [[{"role": "user", "content": f"Write {STYLES[i % 8]} {TOPICS[(i // 8) % 8]}." + " Be vivid." * (i % 5)}]
            for i in range(n)]


def run_engine(args: argparse.Namespace) -> tuple[int, float]:
    from engine import LLM, SamplingParams

    llm = LLM(model=args.model, progress=False, max_num_seqs=args.max_num_seqs,
              max_num_batched_tokens=args.max_num_batched_tokens)
    prompts = [llm.tokenizer.apply_chat_template(c) for c in chat_prompts(args.num_prompts)]
    params = SamplingParams(max_tokens=args.output_tokens, temperature=0.0, ignore_eos=True)

    def measure() -> tuple[int, float]:
        llm.generate(prompt_token_ids=prompts[:2], sampling_params=SamplingParams(max_tokens=2))  # warm-up
        start = time.perf_counter()
        outs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
        return sum(len(o.outputs[0].token_ids) for o in outs), time.perf_counter() - start

    if not args.second_thread:
        return measure()
    # What a server that loads on one thread and steps on another would see (OpenMP pools: see RESULTS.md).
    result: list[tuple[int, float]] = []
    worker = threading.Thread(target=lambda: result.append(measure()))
    worker.start()
    worker.join()
    return result[0]


def run_hf(args: argparse.Namespace) -> tuple[int, float]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.model.loader import resolve_model, tokenizer_path

    path = resolve_model(args.model)
    kwargs = {"gguf_file": path.name} if path.suffix == ".gguf" else {}
    model = AutoModelForCausalLM.from_pretrained(path.parent if kwargs else path, dtype=torch.float32, **kwargs)
    tok = AutoTokenizer.from_pretrained(tokenizer_path(path), padding_side="left")
    tok.pad_token = tok.pad_token or tok.eos_token
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chat_prompts(args.num_prompts)]
    generated, start = 0, time.perf_counter()
    for i in range(0, len(texts), args.batch_size):
        batch = tok(texts[i : i + args.batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(**batch, max_new_tokens=args.output_tokens, min_new_tokens=args.output_tokens,
                             do_sample=False, pad_token_id=tok.pad_token_id)
        generated += (out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0]
    return generated, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--backend", choices=["engine", "hf"], default="engine")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--max-num-seqs", type=int, default=32)
    parser.add_argument("--max-num-batched-tokens", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8, help="hf backend: prompts per generate() call")
    parser.add_argument("--second-thread", action="store_true",
                        help="engine backend: generate on another thread than the one that loaded the model")
    args = parser.parse_args()
    generated, seconds = run_engine(args) if args.backend == "engine" else run_hf(args)
    label = f"max_num_seqs={args.max_num_seqs}" if args.backend == "engine" else f"batch={args.batch_size}"
    label += ", second thread" if args.second_thread else ""
    print(f"{args.backend} {label}: {generated} tokens in {seconds:.1f} s = {generated / seconds:.1f} output tok/s")


if __name__ == "__main__":
    main()
