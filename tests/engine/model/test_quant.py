"""--quantization (engine.model.quant): the AVX2 kernels against the dequantized matmul (int8's on activations
quantized as Q8_0), 4-bit packing, GGUF blocks read exactly, and each mode's engine against a checkpoint that
holds its dequantized weights (its twin; for int8 with its activations quantized the same way), alone,
under tensor parallel 2, under --compile, and with the kernels' feature check forced off."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from fixtures_cpu import AVX2_ONLY, force_cpu
from reference import random_prompts
from safetensors.torch import load_file, save_file

from engine import LLM, SamplingParams
from engine.cpu_features import quant_kernel_path
from engine.model.cpu_quant import cpu_quant_ops
from engine.model.gguf_quant import gguf_blocks
from engine.model.loader import iter_weights
from engine.model.quant import (
    KERNEL_MAX_ROWS,
    LANES,
    Q8_KERNEL_MAX_ROWS,
    InterleavedWeight,
    QuantizedWeight,
    QuantLinearMethod,
    pack_int4,
    quantize_int8,
    unpack_int4,
)
from engine.parallel.layers import ColumnParallelLinear, ShardedLayer

Q = gguf.GGMLQuantizationType
NEW_TOKENS = 10
ENGINE_ARGS = {"max_num_batched_tokens": 16, "block_size": 4, "kv_cache_memory": 32 << 20}
needs_kernels = pytest.mark.skipif(not quant_kernel_path()[0], reason=quant_kernel_path()[1])


@needs_kernels
@pytest.mark.parametrize("rows", [1, 3, 4, 17])
@pytest.mark.parametrize(("n", "k", "group"), [(1543, 576, 32), (7, 576, 576), (9, 96, 32), (6, 40, 8)])
def test_kernels_match_the_dequantized_matmul(rows: int, n: int, k: int, group: int) -> None:
    ops = cpu_quant_ops()
    assert ops is not None
    torch.manual_seed(0)
    w, x = torch.randn(n, k) * 0.05, torch.randn(rows, k)
    q = quantize_int8(w, group)
    with_offset = QuantizedWeight(q.q, q.scale, torch.randn_like(q.scale) * 0.01)
    for weight in (q, with_offset):
        offset = x.new_empty(0) if weight.offset is None else weight.offset
        got = ops.int8_linear(x, weight.q, weight.scale, offset)
        torch.testing.assert_close(got, x @ weight.dequantize().T, atol=1e-4, rtol=1e-5)
    half = w.half()
    torch.testing.assert_close(ops.fp16_linear(x, half), x @ half.float().T, atol=1e-4, rtol=1e-5)


def q8_activations(x: torch.Tensor) -> torch.Tensor:
    """x as the int8 mode's decode kernels see it: Q8_0 blocks of 32 (d = max |x| / 127, codes rounded half
    away from zero), dequantized."""
    blocks = x.reshape(*x.shape[:-1], -1, 32)
    d = blocks.abs().amax(-1, keepdim=True) / 127
    v = torch.where(d > 0, blocks * (1 / d), 0.0)
    return (torch.sign(v) * torch.floor(v.abs() + 0.5) * d).reshape(x.shape)


@needs_kernels
@pytest.mark.parametrize("rows", [1, 3, 16, 21])
@pytest.mark.parametrize(("n", "k", "group"), [(1544, 576, 32), (8, 576, 576), (24, 256, 128)])
def test_integer_dot_kernel_matches_the_matmul_on_q8_activations(rows: int, n: int, k: int, group: int) -> None:
    ops = cpu_quant_ops()
    torch.manual_seed(3)
    x = torch.randn(rows, k)
    x[0, 5] = 40.0  # an outlier costs only its own block's precision
    signed = quantize_int8(torch.randn(n, k) * 0.05, group)
    codes = QuantizedWeight(torch.randint(0, 16, (n, k), dtype=torch.int8), signed.scale, torch.randn_like(signed.scale))
    q4_0 = QuantizedWeight(codes.q - 8, signed.scale)
    for weight in (signed, codes, q4_0, pack_int4(codes), pack_int4(q4_0)):
        il = InterleavedWeight.of(weight)
        assert il.packed == weight.packed
        got = ops.int8_x8_linear(x, il.q, il.scale, il.offset)
        torch.testing.assert_close(got, q8_activations(x) @ weight.dequantize().T, atol=2e-4, rtol=1e-5)
        # prefill-sized batches widen the weight in C++ first
        torch.testing.assert_close(ops.int8_dequantize(il.q, il.scale, il.offset), weight.dequantize())


def test_interleaved_rows_come_back_as_they_went_in() -> None:
    torch.manual_seed(4)
    codes = QuantizedWeight(torch.randint(0, 16, (24, 64), dtype=torch.int8), torch.rand(24, 2), torch.rand(24, 2))
    ids = torch.tensor([0, 23, 9, 9, 14])
    for weight in (quantize_int8(torch.randn(24, 64)), codes, pack_int4(codes)):
        rows = InterleavedWeight.of(weight).rows(ids)
        torch.testing.assert_close(rows.dequantize(), weight.dequantize()[ids], rtol=0, atol=0)
    # the kernels' layout needs whole groups of 8 rows, and K and the group in blocks of 32
    assert InterleavedWeight.of(quantize_int8(torch.randn(7, 64))) is None
    assert InterleavedWeight.of(quantize_int8(torch.randn(8, 48), 48)) is None


def test_4bit_codes_pack_two_per_byte_and_nothing_else_packs() -> None:
    codes = torch.randint(0, 16, (6, 64), dtype=torch.int8)
    weight = QuantizedWeight(codes, torch.rand(6, 2), torch.rand(6, 2))
    packed = pack_int4(weight)
    assert packed.packed and packed.q.shape == (6, 32) and packed.shape == (6, 64)
    assert torch.equal(unpack_int4(packed.q), codes.to(torch.uint8))
    assert torch.equal(packed.dequantize(), weight.dequantize())
    q4_0 = QuantizedWeight(codes - 8, torch.rand(6, 2))  # shifted into 0..15, the shift into the offset
    torch.testing.assert_close(pack_int4(q4_0).dequantize(), q4_0.dequantize())
    assert pack_int4(quantize_int8(torch.randn(6, 64))) is None  # 8-bit codes
    assert pack_int4(QuantizedWeight(codes[:, :40], torch.rand(6, 5))) is None  # groups of 8


def test_int8_quantization_is_per_group_and_idempotent() -> None:
    w = torch.randn(5, 64)
    w[0, 40] = 100.0  # an outlier costs only its own group's precision
    q = quantize_int8(w)
    assert q.group_size == 32 and q.q.dtype == torch.int8
    assert (q.dequantize()[0, :32] - w[0, :32]).abs().max() < w[0, :32].abs().max() / 127
    again = quantize_int8(q.dequantize())
    assert torch.equal(again.q, q.q) and torch.allclose(again.scale, q.scale)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1])
def test_gguf_blocks_are_read_exactly(qtype: Q) -> None:
    original = np.random.default_rng(2).standard_normal((6, 96)).astype(np.float32)
    raw = gguf.quants.quantize(original, qtype)
    weight = gguf_blocks(raw, qtype, 6)
    assert weight.q.dtype == torch.int8 and weight.group_size == 32
    np.testing.assert_array_equal(weight.dequantize().numpy(), gguf.quants.dequantize(raw, qtype))


def test_default_gguf_loads_its_blocks_as_they_are(default_gguf: Path) -> None:
    # Q4_1 linears (attn_q/attn_k un-permuted for llama) and the Q8_0 embedding, as the fp32 loader has them
    wanted = {"model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
              "model.layers.0.self_attn.k_proj.weight", "model.layers.0.mlp.down_proj.weight"}
    dense = {n: t for n, t in iter_weights(default_gguf, torch.float32) if n in wanted}
    kept = {n: t for n, t in iter_weights(default_gguf, torch.float32, keep_quantized=True) if n in wanted}
    for name in wanted:
        assert isinstance(kept[name], QuantizedWeight), name
        assert torch.equal(kept[name].dequantize(), dense[name]), name


def _twin(model_dir: Path, out: Path, mode: str) -> Path:
    """A copy of the checkpoint whose linear weights (a tied embedding too) are those `mode` serves."""
    out.mkdir()
    for file in model_dir.iterdir():
        if file.suffix != ".safetensors" and file.name != "model.safetensors.index.json":
            shutil.copy2(file, out / file.name)
    tensors: dict[str, torch.Tensor] = {}
    for file in model_dir.glob("*.safetensors"):
        tensors.update(load_file(file))
    tied = "lm_head.weight" not in tensors
    for name, t in tensors.items():
        if name.endswith("proj.weight") or name == "lm_head.weight" or (tied and name == "model.embed_tokens.weight"):
            tensors[name] = quantize_int8(t).dequantize() if mode == "int8" else t.half().float()
    save_file(tensors, out / "model.safetensors")
    return out


@pytest.fixture(scope="module")
def twins(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("twins")
    return {(kind, mode): _twin(tiny_models[kind], root / f"{kind}-{mode}", mode)
            for kind in ("exaone_hybrid", "exaone_global") for mode in ("int8", "fp16")}


def _forced(llm: LLM, sequences: list[list[int]]) -> tuple[list[float], list[int]]:
    """Every position's log-probability of the given text and the model's top-1 there, fed in decode-sized
    chunks (ENGINE_ARGS' 16 tokens a step)."""
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1)
    outs = llm.generate(prompt_token_ids=sequences, sampling_params=params)
    lps = [p for o in outs for p in o.prompt_logprobs if p is not None]
    return [p.logprob for p in lps], [p.top[0][0] for p in lps]


def assert_int8_close(quantized: LLM, twin: str, prompts: list[list[int]], monkeypatch: pytest.MonkeyPatch) -> None:
    """The int8 engine against its fp32 twin fed the activations the int8 kernels see (q8_activations).
    The two agree up to summation order, which can move one activation across a rounding boundary and part
    greedy paths; so both are teacher-forced on the int8 engine's greedy text: every log-probability within
    0.05 (a wrong weight moves them by whole nats) and the top-1 the same at >= 90% of positions."""
    continuations = _greedy(quantized, prompts, shutdown=False)
    sequences = [p + tokens for p, (tokens, _) in zip(prompts, continuations, strict=True)]
    try:
        ours, ours_top = _forced(quantized, sequences)
    finally:
        quantized.engine.shutdown()
    reference = LLM(model=twin, progress=False, **ENGINE_ARGS)
    matmul = ShardedLayer.matmul

    def on_q8(layer: ShardedLayer, x: torch.Tensor) -> torch.Tensor:
        fits = 0 < x.shape[0] <= Q8_KERNEL_MAX_ROWS and x.shape[-1] % 32 == 0 and layer.weight.shape[0] % LANES == 0
        return matmul(layer, q8_activations(x) if fits else x)

    with monkeypatch.context() as patch:
        patch.setattr(ShardedLayer, "matmul", on_q8)
        try:
            ref, ref_top = _forced(reference, sequences)
        finally:
            reference.engine.shutdown()
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(ref), atol=0.05, rtol=0)
    assert sum(a == b for a, b in zip(ours_top, ref_top, strict=True)) >= 0.9 * len(ref_top)


def _greedy(llm: LLM, prompts: list[list[int]], shutdown: bool = True) -> list[tuple[list[int], list[float]]]:
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True, logprobs=0)
    try:
        outs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
    finally:
        if shutdown:
            llm.engine.shutdown()
    return [(o.outputs[0].token_ids, [lp.logprob for lp in o.outputs[0].logprobs]) for o in outs]


def _assert_same(ours: list[tuple[list[int], list[float]]], reference: list[tuple[list[int], list[float]]]) -> None:
    for (tokens, lps), (ref_tokens, ref_lps) in zip(ours, reference, strict=True):
        assert tokens == ref_tokens
        torch.testing.assert_close(torch.tensor(lps), torch.tensor(ref_lps), atol=1e-4, rtol=0)


def _served_formats(llm: LLM) -> set[torch.dtype]:
    methods = [m.quant_method for m in llm.engine.model.modules() if getattr(m, "quant_method", None) is not None]
    return {(m.fp16 if m.fp16 is not None else (m.interleaved or m.weight).q).dtype for m in methods}


@needs_kernels
@pytest.mark.parametrize("mode", ["int8", "fp16"])
@pytest.mark.parametrize("kind", ["exaone_hybrid", "exaone_global"])
def test_each_mode_matches_its_dequantized_twin(twins, kind: str, mode: str, monkeypatch) -> None:
    path = str(twins[kind, mode])
    prompts = random_prompts(49152, [9, 23, 17], seed=5)
    quantized = LLM(model=path, progress=False, quantization=mode, **ENGINE_ARGS)
    assert _served_formats(quantized) == {torch.int8 if mode == "int8" else torch.float16}
    if mode == "int8":
        assert_int8_close(quantized, path, prompts, monkeypatch)
    else:
        _assert_same(_greedy(quantized, prompts), _greedy(LLM(model=path, progress=False, **ENGINE_ARGS), prompts))


@needs_kernels
@pytest.mark.parametrize("mode", ["int8", "fp16"])
def test_each_mode_composes_with_tensor_parallel_and_compile(twins, mode: str, monkeypatch) -> None:
    path = str(twins["exaone_hybrid", mode])
    prompts = random_prompts(49152, [9, 23], seed=6)
    reference = None if mode == "int8" else _greedy(LLM(model=path, progress=False, **ENGINE_ARGS), prompts)
    for args in ({"tensor_parallel_size": 2}, {"compile": True}):
        llm = LLM(model=path, progress=False, quantization=mode, **args, **ENGINE_ARGS)
        assert _served_formats(llm) == {torch.int8 if mode == "int8" else torch.float16}
        if mode == "int8":
            assert_int8_close(llm, path, prompts, monkeypatch)
        else:
            _assert_same(_greedy(llm, prompts), reference)


@needs_kernels
def test_compile_prepares_the_graph_past_the_kernels_row_limit(twins) -> None:
    """A step longer than Q8_KERNEL_MAX_ROWS takes the widened-weight branch; its graph variant is compiled at
    start-up, not on the first long prompt (which would stall every running sequence while it compiles)."""
    from torch._dynamo.utils import counters

    args = {**ENGINE_ARGS, "max_num_batched_tokens": Q8_KERNEL_MAX_ROWS + 8}
    llm = LLM(model=str(twins["exaone_global", "int8"]), progress=False, quantization="int8", compile=True, **args)
    try:
        graphs = counters["stats"]["unique_graphs"]
        prompt = random_prompts(49152, [Q8_KERNEL_MAX_ROWS + 5], seed=8)
        llm.generate(prompt_token_ids=prompt, sampling_params=SamplingParams(max_tokens=2, temperature=0.0))
        assert counters["stats"]["unique_graphs"] == graphs
    finally:
        llm.engine.shutdown()


def test_without_the_kernels_the_weights_are_served_dequantized(twins, monkeypatch) -> None:
    force_cpu(monkeypatch, replace(AVX2_ONLY, avx2=False))
    assert not quant_kernel_path()[0]
    path = str(twins["exaone_global", "int8"])
    prompts = random_prompts(49152, [11, 19], seed=7)
    fallback = LLM(model=path, progress=False, quantization="int8", **ENGINE_ARGS)
    assert _served_formats(fallback) == set()
    assert fallback.engine.model.model.layers[0].mlp.down_proj.packed is not None  # packed fp32, as with none
    _assert_same(_greedy(fallback, prompts), _greedy(LLM(model=path, progress=False, **ENGINE_ARGS), prompts))


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="quantization must be one of"):
        LLM(quantization="int4", progress=False)


@needs_kernels
@pytest.mark.parametrize("mode", ["int8", "fp16"])
def test_a_layer_serves_decode_rows_by_kernel_and_prefill_rows_by_gemm(mode: str) -> None:
    torch.manual_seed(1)
    w = torch.randn(48, 64) * 0.1
    layer = ColumnParallelLinear(64, [48])
    layer.quant_method = QuantLinearMethod(mode, torch.float32)
    layer.load_shard(quantize_int8(w) if mode == "int8" else w)
    layer.quant_method.finish(layer)
    assert layer.weight.numel() == 0 and layer.quant_method.nbytes() < w.numel() * 4
    dense = quantize_int8(w).dequantize() if mode == "int8" else w.half().float()
    limit = Q8_KERNEL_MAX_ROWS if mode == "int8" else KERNEL_MAX_ROWS
    for rows in (1, limit, limit + 1, limit + 24):
        x = torch.randn(rows, 64)
        seen = q8_activations(x) if mode == "int8" and rows <= limit else x
        torch.testing.assert_close(layer(x), seen @ dense.T, atol=1e-4, rtol=1e-5)
