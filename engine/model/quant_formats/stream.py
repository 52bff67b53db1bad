"""The checkpoint stream of a quantized safetensors checkpoint, as `<module>.weight` items the model loads.

A quantized linear is several tensors (AWQ/GPTQ: qweight, qzeros, scales, g_idx; FP8: weight,
weight_scale or weight_scale_inv, input_scale), possibly in different shards. The stream holds a module's
tensors until all that the checkpoint has for it arrived (the names are known up front), then yields one
`<module>.weight`: a QuantizedWeight (AWQ/GPTQ, exact) or an Fp8Weight when the caller keeps quantized
weights, else the weight dequantized to the load dtype. Every other tensor passes through, cast.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from engine.model.quant import QuantizedWeight
from engine.model.quant_formats.fp8 import Fp8Weight, fp8_weight
from engine.model.quant_formats.int4 import awq_weight, gptq_weight
from engine.model.quant_formats.spec import CheckpointQuant

# format -> (the tensor that marks a quantized module, every tensor such a module may have)
PARTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "awq": ("qweight", ("qweight", "qzeros", "scales")),
    "gptq": ("qweight", ("qweight", "qzeros", "scales", "g_idx")),
    "fp8": ("weight", ("weight", "weight_scale", "weight_scale_inv", "input_scale")),
}
_FP8_SCALES = ("weight_scale", "weight_scale_inv")

CheckpointWeight = torch.Tensor | QuantizedWeight | Fp8Weight


def quantized_modules(names: Iterable[str], spec: CheckpointQuant) -> dict[str, set[str]]:
    """Module name -> the parts the checkpoint holds for it, for every quantized module."""
    marker, parts = PARTS[spec.method]
    held: dict[str, set[str]] = {}
    for name in names:
        module, _, part = name.rpartition(".")
        if part in parts:
            held.setdefault(module, set()).add(part)
    if spec.method == "fp8":  # an fp8 module is a weight with a scale beside it; a plain weight is not one
        return {m: p for m, p in held.items() if marker in p and p & set(_FP8_SCALES)}
    return {m: p for m, p in held.items() if marker in p}


def _combine(module: str, parts: dict[str, torch.Tensor], spec: CheckpointQuant,
             refuse_act_order: bool) -> CheckpointWeight:
    if spec.method == "awq":
        return awq_weight(parts["qweight"], parts["qzeros"], parts["scales"])
    if spec.method == "gptq":
        return gptq_weight(parts["qweight"], parts["qzeros"], parts["scales"], parts.get("g_idx"), spec.zero_offset,
                           refuse_act_order, module)
    scale = next(parts[s] for s in _FP8_SCALES if s in parts)
    return fp8_weight(parts["weight"], scale, parts.get("input_scale"), spec.weight_block, module)


def quantized_stream(weights: Iterable[tuple[str, torch.Tensor]], names: Iterable[str], spec: CheckpointQuant,
                     dtype: torch.dtype, keep_quantized: bool,
                     dense_act_order: bool = False) -> Iterator[tuple[str, CheckpointWeight]]:
    """Raw (name, tensor) pairs in, model-ready ones out: quantized modules combined, the rest cast to dtype.
    GPTQ act-order weights kept quantized are refused unless dense_act_order lets them come dequantized."""
    expected = quantized_modules(names, spec)
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in weights:
        module, _, part = name.rpartition(".")
        if module not in expected or part not in expected[module]:
            yield name, tensor.to(dtype) if tensor.is_floating_point() else tensor
            continue
        got = pending.setdefault(module, {})
        got[part] = tensor
        if set(got) != expected[module]:
            continue
        weight = _combine(module, pending.pop(module), spec, keep_quantized and not dense_act_order)
        if not keep_quantized:
            weight = weight.to(dtype) if isinstance(weight, torch.Tensor) else weight.dequantize(dtype)
        yield f"{module}.weight", weight
