"""gpu_check's correctness rows: each kernel against its fp32 torch twin, CUDA-graph replay against eager
decode steps, and attention at a 128K context against the torch backend. A row that fails fails the run."""

from __future__ import annotations

import torch

from benchmarks.gpu.common import Checker, Shapes, advance, build_runner, decode_batch, new_seq, prefill
from engine.attention.testing import make_case, run_reference, run_triton
from engine.attention.triton_backend import TritonAttentionBackend
from engine.model.quant_cuda import FP8_MAX, CudaQuantMethod, fp8_matmul_supported
from engine.model.quant_formats.fp8 import Fp8Weight
from engine.parallel.layers import ColumnParallelLinear
from exaone_kernels import fused, reference
from exaone_kernels.cache import write_kv_cache
from exaone_kernels.fp8_block import fp8_block_matmul, fp8_block_reference
from exaone_kernels.w4a16 import pack_w4, w4a16_matmul, w4a16_reference

TOL = 2e-2  # bf16 against fp32 (fp16 in the dry run)


def half(device: torch.device) -> torch.dtype:
    """bf16 on CUDA; fp16 on the CPU, where Triton's interpreter multiplies bf16 tiles as raw uint16 in tl.dot."""
    return torch.bfloat16 if device.type == "cuda" else torch.float16


def check_accuracy(s: Shapes, device: torch.device, checker: Checker) -> list[dict]:
    """(a) each kernel in bf16 against its fp32 torch twin on the same (bf16-rounded) inputs."""
    rows = []
    bf16, fp32 = half(device), torch.float32
    scale = s.head_dim**-0.5
    contexts, q_lens = [0, 300, 0, 77], [1, 1, 45, 38]
    for name, window, segments in (("attention global", None, 0), ("attention ring", 64, 0),
                                   ("attention split-K", None, 8)):
        q_lens_case = [1] * len(q_lens) if segments else q_lens
        case = make_case(contexts, q_lens_case, s.heads, s.kv_heads, s.head_dim, window=window,
                         block_size=s.block_size, max_chunk=64, dtype=bf16, device=device)
        rows.append(checker.row(run_triton(case, scale, segments), run_reference(case.to(fp32), scale), TOL,
                                kernel=name))
    case = make_case(contexts, q_lens, s.heads, s.kv_heads, s.head_dim, block_size=s.block_size, dtype=bf16,
                     device=device)
    got, want = case.kv_cache.clone(), case.kv_cache.clone()
    write_kv_cache(case.k, case.v, got, case.layout.slot_mapping)
    reference.write_kv_cache(case.k, case.v, want, case.layout.slot_mapping)
    rows.append(checker.row(got.nan_to_num(), want.nan_to_num(), 0.0, kernel="cache write"))
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
    rows += [checker.row(out, ref, TOL, kernel=name) for name, out, ref in pairs]
    return rows + check_quantized_gemms(device, checker)


def check_quantized_gemms(device: torch.device, checker: Checker) -> list[dict]:
    """(a) AWQ/GPTQ's W4A16 GEMM and the block-scaled FP8 GEMM in bf16 against their fp32 twins (decode and
    prefill rows, 128-column groups / 128x128 blocks), and FP8 _scaled_mm (per-token activation scales) against
    the fp32 matmul of the same FP8 values."""
    g = torch.Generator().manual_seed(1)
    n, k = 1024, 2048
    qweight = pack_w4(torch.randint(0, 16, (n, k), generator=g)).to(device)
    scales = (torch.rand(k // 128, n, generator=g) * 0.01 + 1e-3).to(device)
    offsets = -scales * torch.randint(0, 16, scales.shape, generator=g).to(device)
    rows = []
    for m in (1, 64):
        x = torch.randn(m, k, generator=g).to(device, half(device))
        rows.append(checker.row(w4a16_matmul(x, qweight, scales, offsets),
                                w4a16_reference(x.float(), qweight, scales, offsets), TOL, kernel=f"w4a16 gemm m={m}"))
    w8 = (torch.randn(n, k, generator=g) * 30).to(device, torch.float8_e4m3fn)
    block_scales = (torch.rand(n // 128, k // 128, generator=g) * 1e-3 + 1e-4).to(device)
    x = torch.randn(16, k, generator=g).to(device, half(device))
    rows.append(checker.row(fp8_block_matmul(x, w8, block_scales, (128, 128)),
                            fp8_block_reference(x.float(), w8, block_scales, (128, 128)), TOL, kernel="fp8 block gemm"))
    if not fp8_matmul_supported(device):
        return rows
    w = (torch.randn(n, k, generator=g) * 0.05).to(device)
    w_scale = w.abs().amax(1) / FP8_MAX
    w8 = (w / w_scale[:, None]).to(torch.float8_e4m3fn)
    layer = ColumnParallelLinear(k, [n]).to(device, half(device))
    layer.quant_method = CudaQuantMethod()
    layer.load_shard(Fp8Weight(w8, w_scale))
    layer.quant_method.finish(layer)
    x = torch.randn(64, k, generator=g).to(device, half(device))
    x_scale = x.float().abs().amax(-1, keepdim=True) / FP8_MAX
    x8 = (x.float() / x_scale).to(torch.float8_e4m3fn).float() * x_scale
    rows.append(checker.row(layer(x), x8 @ (w8.float() * w_scale[:, None]).T, TOL, kernel="fp8 scaled_mm"))
    return rows


def check_graph_replay(s: Shapes, device: torch.device, checker: Checker) -> list[dict]:
    """(a2) decode logits from CUDA-graph replay against the same steps run eagerly, on a 3:1 hybrid model whose
    prompts have wrapped the ring, so the graphs read ring entries on their second lap. On the CPU (no graphs)
    both sides run eagerly: the dry run checks the code, not the graphs."""
    max_tokens = s.graph_prompt + s.graph_steps + 8
    runner = build_runner(s.model_hybrid, device, max(s.graph_batches), max_tokens, s.graph_chunk, s.block_size)
    graphs, ring = runner.graphs, runner.kv.ring_blocks["sliding"]
    gen = torch.Generator().manual_seed(0)
    rows = []
    for batch in s.graph_batches:
        prompts = torch.randint(1, s.model_hybrid["vocab_size"], (batch, s.graph_prompt), generator=gen)
        seqs = [new_seq(i, prompt) for i, prompt in enumerate(prompts.tolist())]
        prefill(runner, seqs, s.graph_chunk)
        eager, replayed = [], []
        for _ in range(s.graph_steps):
            step = decode_batch(runner, seqs)
            runner.graphs = {}
            eager.append(runner.execute(step, list(range(batch)))[0])
            runner.graphs = graphs  # the same step again: it writes the same K/V, then reads them
            replayed.append(runner.execute(step, list(range(batch)))[0])
            advance(seqs, eager[-1].argmax(-1).tolist())
        got, want = torch.stack(replayed), torch.stack(eager)
        rows.append(checker.row(got, want, TOL, batch=batch, graphs=batch in graphs, steps=s.graph_steps,
                                ring_laps=round(seqs[0].num_computed_tokens / (ring * s.block_size), 2),
                                exact=bool(torch.equal(got, want)),
                                same_argmax=float((got.argmax(-1) == want.argmax(-1)).float().mean())))
        for seq in seqs:
            runner.kv.free(seq.block_tables)
    runner.graphs = graphs
    return rows


def check_long_context(s: Shapes, device: torch.device, checker: Checker) -> list[dict]:
    """(a3) attention at long_context tokens, batch 2, through the Triton backend with split-K forced on and off,
    against the torch backend in fp32: two decodes, then a decode beside a prefill chunk; global and ring layers
    (the ring sized for CUDA's step budget, so wrapped many times over)."""
    scale, rows = s.head_dim**-0.5, []
    n = s.long_context
    for layer, window in (("global", None), ("ring", s.window)):
        for step, contexts, q_lens in (("2 decodes", [n - 1, n - 2], [1, 1]),
                                       ("decode + chunk", [n - 1, n - s.long_chunk], [1, s.long_chunk])):
            case = make_case(contexts, q_lens, s.heads, s.kv_heads, s.head_dim, window=window,
                             block_size=s.block_size, max_chunk=s.long_max_chunk, dtype=half(device), device=device)
            want = run_reference(case.to(torch.float32), scale)
            case.meta.scratch.clear()  # the reference's gathered fp32 copy of the cache
            for split in (True, False):
                backend = TritonAttentionBackend(device, s.heads, s.head_dim, len(q_lens))
                # What the SM count and the context decide on their own, forced both ways.
                backend.num_sms, backend.split_k_min_context = (1 << 30, 0) if split else (0, 1 << 62)
                got = backend.forward(case.q, case.k, case.v, case.kv_cache.clone(), case.layout, window, case.meta,
                                      scale)
                rows.append(checker.row(got, want, TOL, layer=layer, step=step, context=n, split_k=split))
                case.meta.scratch.clear()
            del case, want
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows
