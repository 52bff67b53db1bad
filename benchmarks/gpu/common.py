"""What gpu_check's sections share: the shapes of a run, timing, correctness rows, a random-weight runner."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import triton

from engine.attention.triton_backend import TritonAttentionBackend
from engine.config import EngineConfig, ModelConfig
from engine.core.sampling_params import SamplingParams
from engine.core.scheduler import ScheduledBatch
from engine.core.sequence import Sequence
from engine.kv.kv_cache import KVCacheManager, PoolSpec, ring_size
from engine.model.transformer import HybridTransformer
from engine.runner.model_runner import ModelRunner

HYBRID_3_1 = ["sliding_attention"] * 3 + ["full_attention"]  # EXAONE 4.0's "LLLG"


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
    # Graph replay vs eager: 1.2B's layer shape, 3:1 hybrid; the prompts wrap the ring (65 entries, 1,040 tokens).
    model_hybrid: dict = field(default_factory=lambda: dict(
        hidden_size=2048, intermediate_size=4096, num_hidden_layers=8, num_attention_heads=32, num_key_value_heads=8,
        head_dim=64, vocab_size=102400, sliding_window=512, layer_types=HYBRID_3_1 * 2, tie_word_embeddings=True))
    graph_batches: tuple[int, ...] = (1, 32)
    graph_prompt: int = 1536
    graph_chunk: int = 512
    graph_steps: int = 8
    # Attention at a long context against the torch backend: a decode pair, and a decode beside a chunk.
    long_context: int = 131072
    long_chunk: int = 256
    long_max_chunk: int = 8192  # sizes the ring as CUDA's default step budget does
    layer_pair: dict = field(default_factory=lambda: dict(
        hidden_size=5120, intermediate_size=27648, num_attention_heads=40, num_key_value_heads=8, head_dim=128,
        vocab_size=1024, sliding_window=4096, tie_word_embeddings=False))
    pair_tokens: int = 131072
    pair_chunk: int = 2048


_TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
             vocab_size=256, sliding_window=8)
DRY = Shapes(heads=10, kv_heads=2, head_dim=64, window=16, block_size=4, decode_contexts=(8, 40),
             decode_batches=(1, 3), prefill_lens=(40,),
             model_1p2b=dict(_TINY, num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"],
                             tie_word_embeddings=True),
             model_batches=(1, 2), model_prompt=12, model_steps=1,
             model_hybrid=dict(_TINY, num_hidden_layers=4, layer_types=HYBRID_3_1, tie_word_embeddings=True),
             graph_batches=(1, 2), graph_prompt=30, graph_chunk=16, graph_steps=2,
             long_context=40, long_chunk=6, long_max_chunk=16,
             layer_pair=dict(_TINY, tie_word_embeddings=False), pair_tokens=40, pair_chunk=16)


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
    """Largest absolute difference relative to the reference's largest magnitude."""
    return float((out.float() - ref.float()).abs().max() / ref.float().abs().max().clamp(min=1e-6))


class Checker:
    """Makes correctness rows: finite output within a relative error of the reference. With `perturb`, noise of
    that size relative to the reference is added to the side under test first (a self-test: every row fails)."""

    def __init__(self, perturb: float = 0.0) -> None:
        self.perturb = perturb
        self.gen = torch.Generator().manual_seed(0)

    def row(self, got: torch.Tensor, want: torch.Tensor, tol: float, **keys: object) -> dict:
        if self.perturb:
            noise = torch.randn(got.shape, generator=self.gen).to(got.device)
            got = got.float() + self.perturb * want.float().abs().max() * noise
        err, finite = rel_err(got, want), bool(torch.isfinite(got).all())
        return {**keys, "rel_err": err, "tol": tol, "finite": finite, "ok": finite and err <= tol}


def new_seq(seq_id: int, tokens: list[int]) -> Sequence:
    """A sequence of these tokens, as the scheduler would hand the runner."""
    return Sequence(seq_id, f"gpu-check-{seq_id}", 0, tokens, len(tokens), SamplingParams(), None)  # type: ignore[arg-type]


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


def prefill(runner: ModelRunner, seqs: list[Sequence], chunk: int) -> None:
    """Prefill each sequence alone, chunk by chunk, then give it one more token to decode."""
    for seq in seqs:
        while seq.num_computed_tokens < seq.num_tokens:
            n = min(chunk, seq.num_tokens - seq.num_computed_tokens)
            assert runner.kv.allocate(seq.block_tables, seq.num_computed_tokens, n)
            runner.execute(ScheduledBatch([seq], [n]), [0])
            seq.num_computed_tokens += n
        seq.token_ids.append(1)


def decode_batch(runner: ModelRunner, seqs: list[Sequence]) -> ScheduledBatch:
    """The blocks for one more token of each sequence, and the step that decodes it."""
    for seq in seqs:
        assert runner.kv.allocate(seq.block_tables, seq.num_computed_tokens, 1)
    return ScheduledBatch(seqs, [1] * len(seqs))


def advance(seqs: list[Sequence], tokens: list[int]) -> None:
    """After a decode step: the token each sequence sampled."""
    for seq, token in zip(seqs, tokens, strict=True):
        seq.num_computed_tokens += 1
        seq.token_ids.append(token)


def table(title: str, rows: list[dict]) -> str:
    """A Markdown table of rows with the same keys."""
    if not rows:
        return f"### {title}\n\n(nothing measured)\n"
    keys = list(rows[0])
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [f"### {title}", "", "| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"
