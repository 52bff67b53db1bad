"""The CUDA methods for quantized checkpoints (engine.model.quant_cuda), run on the CPU: the W4A16 GEMM
through Triton's interpreter, FP8 through torch._scaled_mm (which has a CPU kernel), each against the
dequantized matmul, and the dequantized fallback where no served format fits."""

from __future__ import annotations

import pytest
import torch
from fixtures_quant_formats import awq_tensors, fp8_tensors, gptq_tensors

from engine.errors import ModelLoadError
from engine.model.quant_cuda import FP8_MAX, CudaQuantMethod
from engine.model.quant_formats.fp8 import fp8_weight
from engine.model.quant_formats.int4 import awq_weight, gptq_weight
from engine.model.quant_formats.spec import checkpoint_quant
from engine.model.quant_formats.stream import quantized_stream
from engine.parallel.layers import ColumnParallelLinear


def _layer(k: int, pieces: list) -> ColumnParallelLinear:
    layer = ColumnParallelLinear(k, [p.shape[0] for p in pieces])
    layer.quant_method = CudaQuantMethod()
    for part, piece in enumerate(pieces):
        layer.load_shard(piece, part)
    layer.quant_method.finish(layer)
    return layer


def test_awq_and_gptq_parts_run_through_the_w4a16_gemm() -> None:
    g = torch.Generator().manual_seed(3)
    w1, w2 = torch.randn(32, 64, generator=g) * 0.1, torch.randn(48, 64, generator=g) * 0.1
    awq, dense1 = awq_tensors(w1, 32)
    gptq, dense2 = gptq_tensors(w2, 32, act_order=False)
    layer = _layer(64, [awq_weight(awq["qweight"], awq["qzeros"], awq["scales"]),
                        gptq_weight(gptq["qweight"], gptq["qzeros"], gptq["scales"], gptq["g_idx"], 1, True, "m")])
    assert layer.quant_method.w4 is not None and layer.weight.numel() == 0
    assert layer.quant_method.nbytes() < 80 * 64 * 2  # under the bf16 weight
    x = torch.randn(5, 64, generator=g)
    torch.testing.assert_close(layer(x), x @ torch.cat([dense1, dense2]).T, rtol=1e-5, atol=1e-5)


def _fp8_inputs(x: torch.Tensor, input_scale: torch.Tensor | None) -> torch.Tensor:
    scale = (x.abs().amax(-1, keepdim=True) / FP8_MAX) if input_scale is None else input_scale
    return (x / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * scale


def test_fp8_runs_through_scaled_mm_with_dynamic_and_static_activation_scales() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 64, generator=g)
    for layout in ("channel", "tensor"):  # tensor: the fixture adds a static input_scale
        tensors, dense = fp8_tensors(torch.randn(32, 64, generator=g) * 0.1, layout)
        piece = fp8_weight(tensors["weight"], tensors["weight_scale"], tensors.get("input_scale"), None, "m")
        layer = _layer(64, [piece])
        assert layer.quant_method.fp8 is not None
        want = _fp8_inputs(x, tensors.get("input_scale")) @ dense.T
        torch.testing.assert_close(layer(x), want, rtol=1e-4, atol=1e-5)


def test_block_fp8_parts_run_through_the_block_gemm() -> None:
    g = torch.Generator().manual_seed(5)
    pieces, denses = [], []
    for rows in (64, 32):
        tensors, dense = fp8_tensors(torch.randn(rows, 96, generator=g) * 0.1, "block")
        pieces.append(fp8_weight(tensors["weight"], tensors["weight_scale_inv"], None, (32, 32), "m"))
        denses.append(dense)
    layer = _layer(96, pieces)
    assert layer.quant_method.fp8_block is not None and layer.weight.numel() == 0
    x = torch.randn(4, 96, generator=g)
    torch.testing.assert_close(layer(x), x @ torch.cat(denses).T, rtol=1e-5, atol=1e-6)


def test_where_no_format_fits_the_weight_is_served_dequantized() -> None:
    tensors, dense = fp8_tensors(torch.randn(64, 64) * 0.1, "block")
    block = fp8_weight(tensors["weight"], tensors["weight_scale_inv"], None, (32, 32), "m")
    plain = torch.randn(16, 64)
    layer = _layer(64, [block, plain])  # an FP8 part beside a plain one: no one format holds both
    assert layer.quant_method is None
    assert torch.equal(layer.weight, torch.cat([dense, plain]))


def test_act_order_gptq_reaches_the_cuda_methods_dequantized() -> None:
    gptq, dense = gptq_tensors(torch.randn(16, 64) * 0.1, 32, act_order=True)
    raw = [(f"m.{part}", t) for part, t in gptq.items()]
    spec = checkpoint_quant({"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 32}})
    with pytest.raises(ModelLoadError, match="act-order"):
        list(quantized_stream(raw, [n for n, _ in raw], spec, torch.bfloat16, keep_quantized=True))
    (name, weight), = quantized_stream(raw, [n for n, _ in raw], spec, torch.bfloat16, keep_quantized=True,
                                       dense_act_order=True)
    assert name == "m.weight"
    assert torch.equal(_layer(64, [weight]).weight, dense)  # the fallback path serves it
