"""Host time of ModelRunner.prepare for decode steps of many long sequences (issue 24, item 4).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/prepare_step.py [--seqs 64] [--contexts 4096 32768 131072]

A hybrid (sliding + global) model of one tiny layer per pool, so only the step's host-side preparation is
measured: input ids, positions, slot mappings and each pool's block tables. Every sequence holds `context`
tokens of blocks (a ring of them in the sliding pool) and each step decodes one token for all of them; the
model is not run. Prints the median and the slowest prepare per context. Point PYTHONPATH at another checkout
to time its runner the same way. One torch thread by default: on a busy machine the few small parallel ops of
prepare (repeat_interleave) otherwise wait ~15 ms for a second core at each OpenMP barrier.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from engine.attention.torch_backend import TorchAttentionBackend
from engine.config import EngineConfig, ModelConfig
from engine.core.sampling_params import SamplingParams
from engine.core.scheduler import ScheduledBatch
from engine.core.sequence import Sequence
from engine.kv.kv_cache import KVCacheManager, PoolSpec, ring_size
from engine.model.transformer import HybridTransformer
from engine.runner.model_runner import ModelRunner

BLOCK, WINDOW, CHUNK = 16, 4096, 512  # EXAONE 4.0's window; the CPU default chunk


def build(num_seqs: int, max_len: int) -> ModelRunner:
    """A runner whose pools hold num_seqs sequences of max_len tokens, with a two-layer 2-dim model."""
    hf = {"architectures": ["Exaone4ForCausalLM"], "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 2,
          "num_attention_heads": 1, "num_key_value_heads": 1, "head_dim": 2, "vocab_size": 8, "rms_norm_eps": 1e-5,
          "max_position_embeddings": max_len, "sliding_window": WINDOW,
          "layer_types": ["sliding_attention", "full_attention"]}
    mcfg = ModelConfig.from_hf(hf)
    pools = {"sliding": PoolSpec(1, WINDOW), "global": PoolSpec(1, None)}
    blocks = {"sliding": num_seqs * ring_size(WINDOW, BLOCK, CHUNK), "global": num_seqs * -(-max_len // BLOCK)}
    kv = KVCacheManager(pools, blocks, BLOCK, CHUNK, enable_caching=False)
    config = EngineConfig(max_model_len=max_len, max_num_seqs=num_seqs, max_num_batched_tokens=CHUNK,
                          block_size=BLOCK, enforce_eager=True, prepack_weights=False)
    model = HybridTransformer(mcfg, TorchAttentionBackend(), max_len).eval()
    return ModelRunner(model, kv, torch.float32, torch.device("cpu"), config)


def time_prepare(num_seqs: int, context: int, steps: int) -> list[float]:
    """Milliseconds of each decode step's prepare, the sequences starting at `context` tokens."""
    runner = build(num_seqs, context + steps + 1)
    seqs = [Sequence(i, f"r{i}", 0, [1] * (context + 1), context + 1, SamplingParams(), None)  # type: ignore[arg-type]
            for i in range(num_seqs)]
    for seq in seqs:  # the prompt's blocks, as its chunked prefill left them
        for start in range(0, context, CHUNK):
            assert runner.kv.allocate(seq.block_tables, start, min(CHUNK, context - start))
        seq.num_computed_tokens = context
    rows = list(range(num_seqs))
    times = []
    for _ in range(steps):
        for seq in seqs:
            assert runner.kv.allocate(seq.block_tables, seq.num_computed_tokens, 1)
        start = time.perf_counter()
        runner.prepare(ScheduledBatch(seqs, [1] * num_seqs), rows)
        times.append((time.perf_counter() - start) * 1000)
        for seq in seqs:
            seq.num_computed_tokens += 1
            seq.token_ids.append(1)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seqs", type=int, default=64)
    parser.add_argument("--contexts", type=int, nargs="+", default=[4096, 32768, 131072])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.seqs} sequences, one decode token each, {args.steps} steps; torch threads {torch.get_num_threads()}")
    print("| context | global entries/row | prepare median ms | slowest ms |\n|---|---|---|---|")
    for context in args.contexts:
        times = time_prepare(args.seqs, context, args.steps)
        print(f"| {context} | {-(-context // BLOCK)} | {statistics.median(times):.2f} | {max(times):.2f} |", flush=True)


if __name__ == "__main__":
    main()
