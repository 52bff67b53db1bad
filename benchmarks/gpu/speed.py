"""gpu_check's speed rows: attention bandwidth and FLOP/s, decode steps eager vs CUDA graphs, a 128K prefill."""

from __future__ import annotations

import time

import torch

from benchmarks.gpu.common import Bench, Shapes, advance, build_runner, decode_batch, new_seq, prefill
from engine.attention.backend import AttentionMetadata, KVLayout
from engine.attention.triton_backend import TritonAttentionBackend
from engine.core.sequence import Sequence
from engine.kv.kv_cache import ring_size
from engine.runner.model_runner import ModelRunner
from exaone_kernels.attention import paged_attention


def decode_case(s: Shapes, batch: int, context: int, window: int | None, device: torch.device,
                ) -> tuple[torch.Tensor, torch.Tensor, KVLayout, AttentionMetadata]:
    """A decode batch at one context length over a random paged (or ring) cache filled with noise."""
    ring = None if window is None else ring_size(window, s.block_size, 512)
    per_seq = ring or -(-context // s.block_size)
    cache = torch.empty(2, batch * per_seq, s.block_size, s.kv_heads, s.head_dim, dtype=torch.bfloat16,
                        device=device).normal_()
    tables = torch.randperm(batch * per_seq, device=device).view(batch, per_seq)
    pos = torch.full((batch,), context - 1, device=device)
    entry = pos // s.block_size if ring is None else (pos // s.block_size) % ring
    slots = tables[torch.arange(batch, device=device), entry] * s.block_size + pos % s.block_size
    layout = KVLayout(tables, slots, ring)
    cu = torch.arange(batch + 1, device=device)
    meta = AttentionMetadata(cu, torch.full((batch,), context, device=device), pos, {"pool": layout}, batch,
                             cu.tolist(), [context] * batch)
    return torch.randn(batch, s.heads, s.head_dim, dtype=torch.bfloat16, device=device), cache, layout, meta


def bench_decode_attention(s: Shapes, device: torch.device, bench: Bench, copy_gbps: float) -> list[dict]:
    """(b) decode attention: achieved GB/s of K/V read against the copy bandwidth, global and local layers."""
    backend = TritonAttentionBackend(device, s.heads, s.head_dim, max(s.decode_batches))
    rows = []
    for kind, window in (("global", None), ("local", s.window)):
        for batch in s.decode_batches:
            for context in s.decode_contexts:
                ms = time_decode(s, backend, batch, context, window, device, bench)
                nbytes = batch * min(context, window or context) * s.kv_heads * s.head_dim * 2 * 2  # K+V, bf16
                gbps = nbytes / ms / 1e6
                rows.append({"layer": kind, "batch": batch, "context": context, "ms": ms, "GB/s": gbps,
                             "of_copy": gbps / copy_gbps, "split_k": batch * s.kv_heads < backend.num_sms})
                if device.type == "cuda":
                    torch.cuda.empty_cache()  # the next case may need the 128K cache's memory
    return rows


def sweep_decode_tiles(s: Shapes, device: torch.device, bench: Bench, copy_gbps: float) -> list[dict]:
    """(b) the key-tile width of the decode kernel on the longest global contexts, to tune its default."""
    backend = TritonAttentionBackend(device, s.heads, s.head_dim, max(s.decode_batches))
    context = max(s.decode_contexts)
    rows = []
    for batch in s.decode_batches[:2]:
        for tile_n in (16, 32, 64, 128):
            backend.tile_n = tile_n
            ms = time_decode(s, backend, batch, context, None, device, bench)
            gbps = batch * context * s.kv_heads * s.head_dim * 2 * 2 / ms / 1e6
            rows.append({"batch": batch, "context": context, "tile_n": tile_n, "ms": ms, "of_copy": gbps / copy_gbps})
    return rows


def time_decode(s: Shapes, backend: TritonAttentionBackend, batch: int, context: int, window: int | None,
                device: torch.device, bench: Bench) -> float:
    """Milliseconds of one decode attention layer (cache write included) through the backend."""
    q, cache, layout, meta = decode_case(s, batch, context, window, device)
    kv = q[:, : s.kv_heads]
    return bench.ms(lambda: backend.forward(q, kv, kv, cache, layout, window, meta, s.head_dim**-0.5))


def bench_prefill_attention(s: Shapes, device: torch.device, bench: Bench) -> list[dict]:
    """(b) prefill attention of one sequence: our kernel vs SDPA (and xformers), useful TFLOP/s of each."""
    rows = []
    bf16 = torch.bfloat16
    for length in s.prefill_lens:
        for kind, window in (("global", None), ("local", s.window)):
            g = torch.Generator(device=device).manual_seed(0)
            q = torch.randn(length, s.heads, s.head_dim, dtype=bf16, device=device, generator=g)
            kv = torch.randn(2, length, s.kv_heads, s.head_dim, dtype=bf16, device=device, generator=g)
            blocks = -(-length // s.block_size)
            cache = torch.zeros(2, blocks * s.block_size, s.kv_heads, s.head_dim, dtype=bf16, device=device)
            cache[:, :length] = kv
            cache = cache.view(2, blocks, s.block_size, s.kv_heads, s.head_dim)
            table = torch.arange(blocks, device=device)[None]
            seq_lens = torch.tensor([length], device=device)
            cu = torch.tensor([0, length], device=device)
            scale = s.head_dim**-0.5
            pairs = sum(min(i + 1, window or length) for i in range(length))
            flops = 4 * pairs * s.heads * s.head_dim
            timings = {"triton": bench.ms(lambda: paged_attention(q, cache, table, seq_lens, cu, scale, window))}  # noqa: B023
            # SDPA on expanded KV heads (prefill is compute-bound); windows need an explicit mask there.
            group = s.heads // s.kv_heads
            qt = q.transpose(0, 1)[None]
            kt, vt = (t.repeat_interleave(group, 1).transpose(0, 1)[None] for t in kv)
            mask = None
            if window is not None:
                i = torch.arange(length, device=device)
                mask = (i[None] <= i[:, None]) & (i[None] > i[:, None] - window)
            timings["sdpa"] = bench.ms(lambda: torch.nn.functional.scaled_dot_product_attention(
                qt, kt, vt, attn_mask=mask, is_causal=mask is None, scale=scale))  # noqa: B023
            timings.update(xformers_ms(q, kv, window, scale, bench))
            for impl, ms in timings.items():
                rows.append({"layer": kind, "tokens": length, "impl": impl, "ms": ms,
                             "TFLOP/s": flops / ms / 1e9 if ms == ms else float("nan")})
    return rows


def xformers_ms(q: torch.Tensor, kv: torch.Tensor, window: int | None, scale: float, bench: Bench) -> dict:
    """xformers' memory-efficient attention with a (local) causal mask, when it imports here."""
    try:
        from xformers.ops import fmha
    except Exception:  # not installed: the check reports only what it can measure
        return {}
    group = q.shape[1] // kv.shape[2]
    k, v = (t.repeat_interleave(group, dim=1)[None] for t in kv)
    bias = (fmha.attn_bias.LowerTriangularMask() if window is None
            else fmha.attn_bias.LocalAttentionFromBottomRightMask(window_left=window - 1, window_right=0))
    try:
        return {"xformers": bench.ms(lambda: fmha.memory_efficient_attention(q[None], k, v, attn_bias=bias,
                                                                             scale=scale))}
    except Exception as e:  # e.g. no kernel for this GPU: say so in the table
        print(f"xformers failed: {e}")
        return {"xformers": float("nan")}


def decode_steps(runner: ModelRunner, seqs: list[Sequence], steps: int, bench: Bench) -> float:
    """Seconds per decode step of the whole batch (host preparation included, sampling not)."""
    bench.sync()
    start = time.perf_counter()
    for _ in range(steps):
        runner.execute(decode_batch(runner, seqs), list(range(len(seqs))))
        advance(seqs, [1] * len(seqs))
    bench.sync()
    return (time.perf_counter() - start) / steps


def bench_model_decode(s: Shapes, device: torch.device, bench: Bench, copy_gbps: float) -> list[dict]:
    """(c) decode steps of a 1.2B-shaped model at each batch, eager vs CUDA graphs, against the roofline."""
    chunk = 2048 if device.type == "cuda" else 16
    max_tokens = s.model_prompt + 4 * s.model_steps + 8
    runner = build_runner(s.model_1p2b, device, max(s.model_batches), max_tokens, chunk, s.block_size)
    weight_bytes = sum(p.numel() * p.element_size() for p in runner.model.parameters())
    roofline_s = weight_bytes / (copy_gbps * 1e9)
    graphs = runner.graphs
    rows = []
    for batch in s.model_batches:
        seqs = [new_seq(i, list(range(100, 100 + s.model_prompt))) for i in range(batch)]
        prefill(runner, seqs, chunk)
        for mode in ("eager", "graphs"):
            if mode == "graphs" and not graphs:
                continue  # none on the CPU
            runner.graphs = graphs if mode == "graphs" else {}
            decode_steps(runner, seqs, 1, bench)  # warm-up
            step_s = decode_steps(runner, seqs, s.model_steps, bench)
            rows.append({"batch": batch, "mode": mode, "step_ms": step_s * 1000, "tok/s": batch / step_s,
                         "of_roofline": roofline_s / step_s, "weight_GB": weight_bytes / 1e9})
        for seq in seqs:
            runner.kv.free(seq.block_tables)
    runner.graphs = graphs
    return rows


def check_long_prefill(s: Shapes, device: torch.device, bench: Bench) -> list[dict]:
    """(d) a local + global 32B-shaped layer pair prefills pair_tokens in chunks; time and peak memory."""
    hf = {**s.layer_pair, "num_hidden_layers": 2, "layer_types": ["sliding_attention", "full_attention"]}
    runner = build_runner(hf, device, 1, s.pair_tokens + 8, s.pair_chunk, s.block_size)
    seq = new_seq(0, [i % s.layer_pair["vocab_size"] for i in range(s.pair_tokens)])  # ids inside the vocabulary
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bench.sync()
    start = time.perf_counter()
    prefill(runner, [seq], s.pair_chunk)
    bench.sync()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return [{"tokens": s.pair_tokens, "chunk": s.pair_chunk, "seconds": seconds, "tok/s": s.pair_tokens / seconds,
             "peak_GiB": peak}]
