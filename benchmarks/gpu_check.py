"""One GPU check of the Triton path: kernel accuracy in bf16, attention bandwidth and FLOP/s, CUDA-graph decode,
and a 128K prefill of a 32B-shaped layer pair.

    python benchmarks/gpu_check.py             # a CUDA machine; a few minutes on an H200
    python benchmarks/gpu_check.py --dry-run   # tiny shapes on the CPU through Triton's interpreter

Sections: (a) every kernel in bf16 against an fp32 torch reference; (b) decode attention with
EXAONE-4.0-32B's head layout as achieved GB/s beside the same run's device copy bandwidth, and prefill
attention TFLOP/s beside scaled_dot_product_attention (and xformers when it imports); (c) decode steps
of a random-weight EXAONE-4.0-1.2B-shaped model, eager vs CUDA graphs, against the weight-streaming
roofline; (d) one 32B-shaped layer pair (local + global) prefilling 128K tokens in chunks.
Prints one table per section and writes gpu_check.json to $OUT (or --out). Imports only torch,
triton, numpy and this repository, so it runs where nothing else can be installed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if "--dry-run" in sys.argv and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first kernel import

import triton

from engine.attention.backend import AttentionMetadata, KVLayout
from engine.attention.testing import make_case, run_reference, run_triton
from engine.attention.triton_backend import TritonAttentionBackend
from engine.config import EngineConfig, ModelConfig
from engine.core.scheduler import ScheduledBatch
from engine.kv.kv_cache import BlockTable, KVCacheManager, PoolSpec, ring_size
from engine.model.transformer import HybridTransformer
from engine.runner.model_runner import ModelRunner
from kernels import fused, reference
from kernels.attention import paged_attention
from kernels.cache import write_kv_cache


@dataclass
class Shapes:
    """Everything a run's size depends on; the dry run shrinks all of it."""

    heads: int = 40  # EXAONE-4.0-32B attention layout
    kv_heads: int = 8
    head_dim: int = 128
    window: int = 4096
    block_size: int = 16
    decode_contexts: tuple[int, ...] = (4096, 32768, 131072)
    decode_batches: tuple[int, ...] = (1, 32, 128)
    prefill_lens: tuple[int, ...] = (8192, 16384)
    model_1p2b: dict = field(default_factory=lambda: dict(
        hidden_size=2048, intermediate_size=4096, num_hidden_layers=30, num_attention_heads=32,
        # all global, as EXAONE-4.0-1.2B (benchmarks/exaone_1b2.py): a window here would make it 3:1 hybrid
        num_key_value_heads=8, head_dim=64, vocab_size=102400, sliding_window=None, tie_word_embeddings=True))
    model_batches: tuple[int, ...] = (1, 32)
    model_prompt: int = 512
    model_steps: int = 64
    layer_pair: dict = field(default_factory=lambda: dict(
        hidden_size=5120, intermediate_size=27648, num_attention_heads=40, num_key_value_heads=8, head_dim=128,
        vocab_size=1024, sliding_window=4096, tie_word_embeddings=False))
    pair_tokens: int = 131072
    pair_chunk: int = 2048


DRY = Shapes(heads=10, kv_heads=2, head_dim=64, window=16, block_size=4, decode_contexts=(8, 40),
             decode_batches=(1, 3), prefill_lens=(40,),
             model_1p2b=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, head_dim=16, vocab_size=256, sliding_window=8,
                             layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=True),
             model_batches=(1, 2), model_prompt=12, model_steps=1,
             layer_pair=dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                             head_dim=16, vocab_size=256, sliding_window=8, tie_word_embeddings=False),
             pair_tokens=40, pair_chunk=16)


class Bench:
    """Medians from triton.testing.do_bench on CUDA; one timed call on the CPU (the dry run checks the code)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def ms(self, fn: Callable[[], object]) -> float:
        if self.device.type == "cuda":
            return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1000

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def copy_gbps(self, nbytes: int) -> float:
        """Device-to-device copy bandwidth (bytes read + written per second), in GB/s."""
        src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=self.device)
        dst = torch.empty_like(src)
        return 2 * nbytes / self.ms(lambda: dst.copy_(src)) / 1e6


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).abs().max() / ref.float().abs().max().clamp(min=1e-6))


def check_accuracy(s: Shapes, device: torch.device) -> list[dict]:
    """(a) each kernel in bf16 against its fp32 torch twin on the same (bf16-rounded) inputs.

    Triton's interpreter multiplies bf16 tiles as raw uint16 in tl.dot, so the CPU dry run uses fp16.
    """
    rows = []
    bf16 = torch.bfloat16 if device.type == "cuda" else torch.float16
    fp32 = torch.float32
    scale = s.head_dim**-0.5
    contexts, q_lens = [0, 300, 0, 77], [1, 1, 45, 38]
    for name, window, segments in (("attention global", None, 0), ("attention ring", 64, 0),
                                   ("attention split-K", None, 8)):
        q_lens_case = [1] * len(q_lens) if segments else q_lens
        case = make_case(contexts, q_lens_case, s.heads, s.kv_heads, s.head_dim, window=window,
                         block_size=s.block_size, max_chunk=64, dtype=bf16, device=device)
        out = run_triton(case, scale, segments)
        rows.append({"kernel": name, "rel_err": rel_err(out, run_reference(case.to(fp32), scale)),
                     "finite": bool(torch.isfinite(out).all())})
    case = make_case(contexts, q_lens, s.heads, s.kv_heads, s.head_dim, block_size=s.block_size, dtype=bf16,
                     device=device)
    got, want = case.kv_cache.clone(), case.kv_cache.clone()
    write_kv_cache(case.k, case.v, got, case.layout.slot_mapping)
    reference.write_kv_cache(case.k, case.v, want, case.layout.slot_mapping)
    rows.append({"kernel": "cache write", "rel_err": 0.0 if torch.equal(got.nan_to_num(), want.nan_to_num()) else 1.0,
                 "finite": True})
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2 * 1024, generator=g).to(device, bf16)
    res = torch.randn(64, 1024, generator=g).to(device, bf16)
    w = torch.randn(1024, generator=g).to(device, bf16)
    qk = torch.randn(64, s.heads + s.kv_heads, s.head_dim, generator=g).to(device, bf16)
    q, k = qk[:, : s.heads], qk[:, s.heads :]
    hw = torch.randn(s.head_dim, generator=g).to(device, bf16)
    ang = (torch.arange(64, device=device)[:, None, None] * torch.rand(1, 1, s.head_dim // 2, device=device))
    cos, sin = ang.repeat(1, 1, 2).cos().to(bf16), ang.repeat(1, 1, 2).sin().to(bf16)
    f32 = lambda *ts: [t.float() for t in ts]  # noqa: E731
    pairs = [
        ("rms_norm + residual", fused.rms_norm(x[:, :1024], w, 1e-5, res),
         reference.rms_norm(*f32(x[:, :1024], w), 1e-5, res.float())),
        ("qk_norm + rope", torch.cat(fused.qk_norm_rope(q, k, hw, hw, 1e-5, cos, sin), 1),
         torch.cat(reference.qk_norm_rope(*f32(q, k, hw, hw), 1e-5, *f32(cos, sin)), 1)),
        ("silu_and_mul", fused.silu_and_mul(x), reference.silu_and_mul(x.float())),
    ]
    for name, out, ref in pairs:
        rows.append({"kernel": name, "rel_err": rel_err(out, ref), "finite": bool(torch.isfinite(out).all())})
    for row in rows:
        row["ok"] = row["finite"] and row["rel_err"] <= 2e-2
    return rows


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


@dataclass
class BenchSeq:
    """The fields of a Sequence that ModelRunner.prepare reads."""

    token_ids: list[int]
    num_computed_tokens: int = 0
    block_tables: dict[str, BlockTable] = field(default_factory=dict)


def build_runner(hf: dict, device: torch.device, max_num_seqs: int, max_tokens: int, chunk: int,
                 block_size: int) -> ModelRunner:
    """A random-weight model of the given shape with KV pools for max_num_seqs sequences of max_tokens."""
    hf = {"architectures": ["Exaone4ForCausalLM"], "rms_norm_eps": 1e-5, "max_position_embeddings": max_tokens,
          **hf}
    mcfg = ModelConfig.from_hf(hf)
    # No oneDNN packing: the weights stay as CUDA serves them, so the CPU dry run checks the GPU's code path
    # whatever bf16 support the CPU has.
    config = EngineConfig(max_model_len=max_tokens, max_num_seqs=max_num_seqs, max_num_batched_tokens=chunk,
                          block_size=block_size, prepack_weights=False)
    backend = TritonAttentionBackend(device, mcfg.num_heads, mcfg.head_dim, max_num_seqs)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with device:
            model = HybridTransformer(mcfg, backend, max_tokens).eval()
    finally:
        torch.set_default_dtype(default)
    # Weights as an initialiser leaves them (not torch.empty's leftovers): finite, varied logits to compare.
    gen = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:  # q_norm, k_norm, the post-block layernorms, the final norm
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=gen)
    kinds = [spec.kv_kind for spec in mcfg.layers]
    pools = {kind: PoolSpec(kinds.count(kind), mcfg.sliding_window if kind == "sliding" else None)
             for kind in set(kinds)}
    per_seq = -(-max_tokens // block_size)
    need = {kind: max_num_seqs * (min(per_seq, ring_size(spec.window, block_size, chunk)) if spec.window
                                  else per_seq) for kind, spec in pools.items()}
    kv = KVCacheManager(pools, need, block_size, chunk)
    return ModelRunner(model, kv, torch.bfloat16, device, config)


def prefill(runner: ModelRunner, seqs: list[BenchSeq], chunk: int) -> None:
    """Prefill each sequence alone, chunk by chunk."""
    for seq in seqs:
        while seq.num_computed_tokens < len(seq.token_ids):
            n = min(chunk, len(seq.token_ids) - seq.num_computed_tokens)
            assert runner.kv.allocate(seq.block_tables, seq.num_computed_tokens, n)
            runner.execute(ScheduledBatch([seq], [n]), [0])  # type: ignore[list-item]
            seq.num_computed_tokens += n
        seq.token_ids.append(1)


def decode_steps(runner: ModelRunner, seqs: list[BenchSeq], steps: int, bench: Bench) -> float:
    """Seconds per decode step of the whole batch (host preparation included, sampling not)."""
    bench.sync()
    start = time.perf_counter()
    for _ in range(steps):
        for seq in seqs:
            assert runner.kv.allocate(seq.block_tables, seq.num_computed_tokens, 1)
        runner.execute(ScheduledBatch(seqs, [1] * len(seqs)), list(range(len(seqs))))  # type: ignore[arg-type]
        for seq in seqs:
            seq.num_computed_tokens += 1
            seq.token_ids.append(1)
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
        seqs = [BenchSeq(list(range(100, 100 + s.model_prompt))) for _ in range(batch)]
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
    seq = BenchSeq(list(range(s.pair_tokens)))
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


def table(title: str, rows: list[dict]) -> str:
    """A Markdown table of rows with the same keys."""
    if not rows:
        return f"### {title}\n\n(nothing measured)\n"
    keys = list(rows[0])
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [f"### {title}", "", "| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes (on the CPU: Triton's interpreter)")
    parser.add_argument("--sections", default="abcd", help="which of a, b, c, d to run (default all)")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_check.json (default $OUT)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.dry_run:
        parser.error("no CUDA device: run with --dry-run to check the script on the CPU")
    s = DRY if args.dry_run else Shapes()
    bench = Bench(device)
    started = time.perf_counter()
    copy_gbps = bench.copy_gbps(1 << 30 if device.type == "cuda" else 1 << 20)
    report: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (interpreter)",
                    "torch": torch.__version__, "triton": triton.__version__, "shapes": asdict(s),
                    "copy_GB/s": copy_gbps}
    sections = {
        "a": ("(a) kernels in bf16 vs fp32 torch twins", lambda: check_accuracy(s, device)),
        "b": ("(b) decode attention, GB/s vs copy", lambda: bench_decode_attention(s, device, bench, copy_gbps)),
        "b2": ("(b) decode tile width sweep, global", lambda: sweep_decode_tiles(s, device, bench, copy_gbps)),
        "b3": ("(b) prefill attention, TFLOP/s", lambda: bench_prefill_attention(s, device, bench)),
        "c": ("(c) 1.2B-shaped decode, eager vs CUDA graphs", lambda: bench_model_decode(s, device, bench, copy_gbps)),
        "d": ("(d) 32B-shaped layer pair, chunked prefill", lambda: check_long_prefill(s, device, bench)),
    }
    print(f"device: {report['device']}  copy bandwidth: {copy_gbps:.1f} GB/s\n")
    for key, (title, run) in sections.items():
        if key[0] not in args.sections:
            continue
        t0 = time.perf_counter()
        rows = run()
        report[key] = rows
        print(table(title, rows) + f"({time.perf_counter() - t0:.1f} s)\n", flush=True)
    report["seconds"] = time.perf_counter() - started
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    return report


if __name__ == "__main__":
    main()
