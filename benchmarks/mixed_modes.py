"""A mixed load at saturation, fcfs vs mode-aware scheduling: 80% reasoning requests with long budgets,
20% one-line chats; TTFT and E2E per class (p50/p99), total output tok/s, preemptions.

    .venv/bin/python benchmarks/mixed_modes.py          # 40 requests, 8 in a batch, reasoning max_tokens 128
    .venv/bin/python benchmarks/mixed_modes.py --requests 20 --max-num-seqs 4 --reasoning-max-tokens 64

The engine without HTTP (a stand-in until the locust load suite covers modes). Arrivals are counted in
engine steps, not seconds (one request per step, so the queue builds up: saturation), which keeps the
schedule the same for every policy on a machine whose speed varies with other jobs. Each policy runs
on its own engine in this process, one after the other.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from engine import LLM, SamplingParams
from engine.chat_templates import render_chat_prompt
from engine.reasoning import ReasoningConfig

TOPICS = ["tides", "volcanoes", "bread", "compilers", "bees", "glaciers", "chess", "rainbows"]


def workload(llm: LLM, n: int, seed: int, think: int) -> list[tuple[str, list[int], SamplingParams]]:
    """(class, prompt, params) per request, in arrival order: 4 of 5 reason (max_tokens `think`, a budget
    of 3/4 of it), 1 of 5 is a 16-token chat."""
    tok = llm.tokenizer
    engine = llm.engine
    config = ReasoningConfig.from_tokenizer(tok.hf, engine.model_config.vocab_size, sorted(engine.eos_token_ids))
    rng = random.Random(seed)
    out = []
    for i in range(n):
        reasoning = i % 5 != 4
        question = f"Explain {TOPICS[i % len(TOPICS)]} step by step." if reasoning else "Say hi."
        text = render_chat_prompt(tok.hf, [{"role": "user", "content": question}], enable_thinking=reasoning)
        if reasoning:
            params = SamplingParams(max_tokens=think, temperature=0.0, ignore_eos=True, reasoning=True,
                                    logits_processor_factories=[config.budget_processor_factory(think * 3 // 4)])
        else:
            params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
        out.append(("reasoning" if reasoning else "chat", tok.encode(text, add_special_tokens=False), params))
    rng.shuffle(out)
    return out


def run(llm: LLM, requests: list) -> dict:
    engine = llm.engine
    pending = list(enumerate(requests))
    arrival, first, done, steps = {}, {}, {}, 0
    tokens = 0
    start = time.perf_counter()
    while pending or engine.has_unfinished():
        if pending:  # one arrival per step
            i, (_, prompt, params) = pending.pop(0)
            engine.add_request(str(i), prompt, params)
            arrival[str(i)] = (time.perf_counter(), steps)
        for out in engine.step():
            now = (time.perf_counter(), steps)
            tokens += sum(len(o.token_ids) for o in out.outputs)
            first.setdefault(out.request_id, now)
            if out.finished:
                done[out.request_id] = now
        steps += 1
    elapsed = time.perf_counter() - start
    stats = {"tok/s": tokens / elapsed, "seconds": elapsed, "steps": steps,
             "preemptions": engine.stats()["num_preemptions"]}
    for cls in ("chat", "reasoning"):
        ids = [str(i) for i, (c, _, _) in enumerate(requests) if c == cls]
        for name, end in (("TTFT", first), ("E2E", done)):
            secs = sorted(end[r][0] - arrival[r][0] for r in ids)
            stp = sorted(end[r][1] - arrival[r][1] for r in ids)
            stats[f"{cls} {name}"] = (pct(secs, 50), pct(secs, 99), pct(stp, 50), pct(stp, 99))
    return stats


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--max-num-seqs", type=int, default=8)
    parser.add_argument("--policies", nargs="+", default=["fcfs", "mode-aware"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reasoning-max-tokens", type=int, default=128)
    args = parser.parse_args()
    print("policy | class | TTFT p50 / p99 (s) | E2E p50 / p99 (s) | TTFT p50 / p99 (steps) | E2E p50 / p99 (steps)")
    totals = []
    for policy in args.policies:
        llm = LLM(model=args.model, progress=False, max_num_seqs=args.max_num_seqs, scheduling_policy=policy)
        llm.generate("Hello", SamplingParams(max_tokens=2))  # warm-up
        stats = run(llm, workload(llm, args.requests, args.seed, args.reasoning_max_tokens))
        for cls in ("chat", "reasoning"):
            t, e = stats[f"{cls} TTFT"], stats[f"{cls} E2E"]
            print(f"{policy} | {cls} | {t[0]:.1f} / {t[1]:.1f} | {e[0]:.1f} / {e[1]:.1f} | "
                  f"{t[2]:.0f} / {t[3]:.0f} | {e[2]:.0f} / {e[3]:.0f}", flush=True)
        totals.append(f"{policy}: {stats['tok/s']:.1f} output tok/s, {stats['steps']} steps, "
                      f"{stats['seconds']:.0f} s, {stats['preemptions']} preemptions")
        del llm
    print("\n".join(totals))


if __name__ == "__main__":
    main()
