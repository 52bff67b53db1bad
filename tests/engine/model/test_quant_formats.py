"""LG's quantized EXAONE 4.0 checkpoint formats (engine.model.quant_formats): AWQ, GPTQ and FP8 tensors read
exactly, and each format's engine against the twin checkpoint holding the weights it serves (fp32), with
--quantization none and int8, under tensor parallel 2, and with the int8 kernels' feature check forced off."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fixtures_cpu import AVX2_ONLY, force_cpu
from fixtures_quant_formats import awq_tensors, fp8_tensors, gptq_tensors, write_quantized
from reference import random_prompts
from test_quant import ENGINE_ARGS, _assert_same, _greedy, assert_int8_close, needs_kernels

from engine import LLM
from engine.errors import ModelLoadError
from engine.model.quant import QuantizedWeight
from engine.model.quant_formats.fp8 import Fp8Weight, fp8_weight
from engine.model.quant_formats.int4 import awq_weight, gptq_weight
from engine.model.quant_formats.spec import checkpoint_quant

SERVED = ("awq", "gptq", "fp8_tensor", "fp8_block", "fp8_channel")


@pytest.fixture(scope="module")
def checkpoints(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, ...]]:
    root = tmp_path_factory.mktemp("quant_formats")
    made = {fmt: write_quantized(tiny_models["exaone_hybrid"], root, fmt) for fmt in (*SERVED, "gptq_act_order")}
    made["awq_tied"] = write_quantized(tiny_models["exaone_global"], root / "tied", "awq")  # the 1.2B's tied head
    return made


@pytest.mark.parametrize(("n", "k", "group"), [(16, 64, 32), (40, 128, 128), (8, 96, 32)])
def test_awq_and_gptq_tensors_load_exactly(n: int, k: int, group: int) -> None:
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(n + k)) * 0.1
    awq, dense = awq_tensors(w, group)
    got = awq_weight(awq["qweight"], awq["qzeros"], awq["scales"])
    assert got.q.dtype == torch.int8 and got.group_size == group
    assert torch.equal(got.dequantize(), dense)
    gptq, dense = gptq_tensors(w, group, act_order=False)
    got = gptq_weight(gptq["qweight"], gptq["qzeros"], gptq["scales"], gptq["g_idx"], 1, True, "m")
    assert isinstance(got, QuantizedWeight) and got.group_size == group
    assert torch.equal(got.dequantize(), dense)


def test_gptq_act_order_dequantizes_exactly_or_is_refused_in_one_line() -> None:
    w = torch.randn(16, 64) * 0.1
    gptq, dense = gptq_tensors(w, 32, act_order=True)
    args = (gptq["qweight"], gptq["qzeros"], gptq["scales"], gptq["g_idx"], 1)
    assert torch.equal(gptq_weight(*args, False, "m"), dense)
    with pytest.raises(ModelLoadError, match=r"^m: GPTQ act-order .* --quantization none") as err:
        gptq_weight(*args, True, "m")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("layout", ["tensor", "channel", "block"])
def test_fp8_scales_of_each_layout_dequantize_and_slice(layout: str) -> None:
    w = torch.randn(64, 96) * 0.2
    tensors, dense = fp8_tensors(w, layout)
    scale = tensors.get("weight_scale", tensors.get("weight_scale_inv"))
    got = fp8_weight(tensors["weight"], scale, tensors.get("input_scale"), (32, 32) if layout == "block" else None, "m")
    torch.testing.assert_close(got.dequantize(), dense, rtol=1e-6, atol=0)
    for index in (slice(32, 64), (slice(None), slice(32, 96)), (slice(0, 16), slice(None))):
        part = got[index]
        torch.testing.assert_close(part.dequantize() if isinstance(part, Fp8Weight) else part, dense[index],
                                   rtol=1e-6, atol=0)
    assert isinstance(got[32:64], Fp8Weight) and isinstance(got[:, 32:96], Fp8Weight)


@pytest.mark.parametrize(("config", "why"), [
    ({"quant_method": "awq", "bits": 4, "version": "gemv"}, "GEMM packing"),
    ({"quant_method": "gptq", "bits": 3}, "only 4-bit"),
    ({"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {}}, "float-quantized"),
    ({"quant_method": "bitsandbytes"}, "quant_method 'bitsandbytes'"),
])
def test_formats_that_do_not_load_are_named(config: dict, why: str) -> None:
    with pytest.raises(ModelLoadError, match=why):
        checkpoint_quant({"quantization_config": config})


def test_configs_as_the_releases_write_them() -> None:
    gptq = checkpoint_quant({"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128,
                                                     "desc_act": False, "sym": True}})
    assert (gptq.method, gptq.group_size, gptq.zero_offset) == ("gptq", 128, 1)
    fp8 = checkpoint_quant({"quantization_config": {"quant_method": "fp8", "activation_scheme": "dynamic",
                                                    "weight_block_size": [128, 128]}})
    assert (fp8.method, fp8.weight_block) == ("fp8", (128, 128))
    assert checkpoint_quant({}) is None


def _int8_groups(llm: LLM) -> set[int]:
    return {(m.quant_method.interleaved or m.quant_method.weight).group_size for name, m in llm.engine.model.named_modules()
            if name.endswith("proj") and getattr(m, "quant_method", None) is not None}


@pytest.mark.parametrize("fmt", SERVED)
def test_each_format_matches_its_dequantized_twin(checkpoints, fmt: str) -> None:
    quantized, twin, _ = checkpoints[fmt]
    prompts = random_prompts(49152, [9, 23], seed=8)
    reference = _greedy(LLM(model=str(twin), progress=False, **ENGINE_ARGS), prompts)
    _assert_same(_greedy(LLM(model=str(quantized), progress=False, **ENGINE_ARGS), prompts), reference)


@needs_kernels
@pytest.mark.parametrize("fmt", [*SERVED, "awq_tied"])
def test_each_format_serves_int8_groups_and_matches_its_twin(checkpoints, fmt: str, monkeypatch) -> None:
    quantized, _, int8_twin = checkpoints[fmt]
    prompts = random_prompts(49152, [9, 23], seed=9)
    llm = LLM(model=str(quantized), progress=False, quantization="int8", **ENGINE_ARGS)
    assert _int8_groups(llm) == {32}  # the 4-bit formats' own groups; FP8 requantized to Q8_0's groups of 32
    assert_int8_close(llm, str(int8_twin), prompts, monkeypatch)


@needs_kernels
@pytest.mark.parametrize("fmt", ["awq", "gptq", "fp8_block"])
def test_each_format_composes_with_tensor_parallel(checkpoints, fmt: str, monkeypatch) -> None:
    quantized, _, int8_twin = checkpoints[fmt]
    prompts = random_prompts(49152, [9, 23], seed=10)
    tp = LLM(model=str(quantized), progress=False, quantization="int8", tensor_parallel_size=2, **ENGINE_ARGS)
    assert_int8_close(tp, str(int8_twin), prompts, monkeypatch)


@needs_kernels
def test_a_4bit_format_composes_with_compile(checkpoints, monkeypatch) -> None:
    quantized, _, int8_twin = checkpoints["gptq"]
    prompts = random_prompts(49152, [9, 23], seed=13)
    compiled = LLM(model=str(quantized), progress=False, quantization="int8", compile=True, **ENGINE_ARGS)
    assert _int8_groups(compiled) == {32}
    assert_int8_close(compiled, str(int8_twin), prompts, monkeypatch)


@pytest.mark.parametrize("fmt", ["awq", "gptq", "fp8_channel"])
def test_without_the_kernels_each_format_is_served_dequantized(checkpoints, fmt: str, monkeypatch) -> None:
    force_cpu(monkeypatch, replace(AVX2_ONLY, avx2=False))
    quantized, twin, _ = checkpoints[fmt]  # the fallback serves the checkpoint's weights as they dequantize
    prompts = random_prompts(49152, [11, 19], seed=11)
    fallback = LLM(model=str(quantized), progress=False, quantization="int8", **ENGINE_ARGS)
    assert fallback.engine.model.model.layers[0].mlp.down_proj.packed is not None  # packed fp32, as with none
    _assert_same(_greedy(fallback, prompts), _greedy(LLM(model=str(twin), progress=False, **ENGINE_ARGS), prompts))


def test_act_order_gptq_loads_with_none_and_is_refused_with_int8(checkpoints) -> None:
    quantized, twin, _ = checkpoints["gptq_act_order"]
    prompts = random_prompts(49152, [13], seed=12)
    reference = _greedy(LLM(model=str(twin), progress=False, **ENGINE_ARGS), prompts)
    _assert_same(_greedy(LLM(model=str(quantized), progress=False, **ENGINE_ARGS), prompts), reference)
    with pytest.raises(ModelLoadError, match="act-order"):
        LLM(model=str(quantized), progress=False, quantization="int8", **ENGINE_ARGS)


@needs_kernels
def test_vllm_method_names_check_the_checkpoint_and_serve_it_as_stored(checkpoints, tiny_models) -> None:
    quantized, _, _ = checkpoints["awq"]
    prompts = random_prompts(49152, [9, 23], seed=14)
    by_name = LLM(model=str(quantized), progress=False, quantization="awq", **ENGINE_ARGS)
    assert _int8_groups(by_name) == {32}
    _assert_same(_greedy(by_name, prompts),
                 _greedy(LLM(model=str(quantized), progress=False, quantization="int8", **ENGINE_ARGS), prompts))
    with pytest.raises(ModelLoadError, match=r"--quantization gptq: the checkpoint's config\.json declares quant_method 'awq'"):
        LLM(model=str(quantized), progress=False, quantization="gptq", **ENGINE_ARGS)
    with pytest.raises(ModelLoadError, match=r"--quantization fp8: .* no quantization_config"):
        LLM(model=str(tiny_models["exaone_hybrid"]), progress=False, quantization="fp8", **ENGINE_ARGS)
