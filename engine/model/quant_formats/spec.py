"""A checkpoint's `quantization_config` (config.json) read into one CheckpointQuant, or refused in one line.

The formats LG publishes EXAONE 4.0 in, as their configs describe them (vLLM's parsers are the model):
AutoAWQ GEMM (`quant_method: awq`), AutoGPTQ / GPTQModel (`gptq`, `checkpoint_format` gptq or gptq_v2),
Hugging Face fp8 (`fp8`: per-tensor `weight_scale`, or `weight_block_size` blocks with `weight_scale_inv`)
and compressed-tensors' fp8 `float-quantized` (per-tensor, per-channel or block `weight_scale`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.errors import ModelLoadError

FORMATS = ("awq", "gptq", "fp8")


@dataclass(frozen=True)
class CheckpointQuant:
    """What a quantized checkpoint's linear tensors hold and how to read them (which modules are quantized
    is read from the tensors themselves: a module with a qweight or a weight_scale is, lm_head usually is not)."""

    method: str  # one of FORMATS
    group_size: int = 0  # awq/gptq: input columns per scale; -1 = a whole row (gptq)
    zero_offset: int = 0  # gptq v1 checkpoints store zero - 1 (AutoGPTQ's convention), v2 and awq store zero
    desc_act: bool = False  # gptq: act-order, columns grouped by g_idx rather than by position
    activation_scheme: str = "dynamic"  # fp8: per-token/tensor scales at run time, or the checkpoint's input_scale
    weight_block: tuple[int, int] | None = None  # fp8: [rows, columns] per scale, when scales are per block


def _refuse(why: str) -> ModelLoadError:
    return ModelLoadError(f"unsupported quantization_config in config.json: {why}")


def _block(block: Any) -> tuple[int, int]:
    if not isinstance(block, list | tuple) or len(block) != 2 or not all(isinstance(b, int) and b > 0 for b in block):
        raise _refuse(f"fp8 weight block {block!r} (expected [rows, columns])")
    return int(block[0]), int(block[1])


def _awq(q: dict[str, Any]) -> CheckpointQuant:
    bits = q.get("bits", q.get("w_bit", 4))
    version = str(q.get("version", "gemm")).lower()
    if bits != 4 or version != "gemm":
        raise _refuse(f"AWQ {bits}-bit version {version!r} (only AutoAWQ's 4-bit GEMM packing loads)")
    if not q.get("zero_point", True):
        raise _refuse("AWQ without zero points (zero_point: false)")
    group = int(q.get("group_size", q.get("q_group_size", 128)))
    return CheckpointQuant("awq", group_size=group)


def _gptq(q: dict[str, Any]) -> CheckpointQuant:
    if q.get("bits", 4) != 4:
        raise _refuse(f"GPTQ with {q.get('bits')} bits (only 4-bit loads)")
    fmt = str(q.get("checkpoint_format", "gptq"))
    if fmt not in ("gptq", "gptq_v2"):
        raise _refuse(f"GPTQ checkpoint_format {fmt!r} (gptq and gptq_v2 load)")
    return CheckpointQuant("gptq", group_size=int(q.get("group_size", 128)), zero_offset=1 if fmt == "gptq" else 0,
                           desc_act=bool(q.get("desc_act", False)))


def _fp8(q: dict[str, Any]) -> CheckpointQuant:
    scheme = q.get("activation_scheme", "dynamic")
    if scheme not in ("dynamic", "static"):
        raise _refuse(f"fp8 activation_scheme {scheme!r}")
    block = q.get("weight_block_size")
    return CheckpointQuant("fp8", activation_scheme=scheme, weight_block=None if block is None else _block(block))


def _compressed_tensors(q: dict[str, Any]) -> CheckpointQuant:
    fmt = q.get("format")
    groups = list((q.get("config_groups") or {}).values())
    weights = [g.get("weights") or {} for g in groups]
    if fmt != "float-quantized" or not weights or any(w.get("type") != "float" or w.get("num_bits") != 8
                                                      for w in weights):
        raise _refuse(f"compressed-tensors format {fmt!r} (only fp8 float-quantized weights load)")
    acts = [g.get("input_activations") or {} for g in groups]
    static = any(a and not a.get("dynamic", True) for a in acts)
    block = weights[0].get("block_structure") if weights[0].get("strategy") == "block" else None
    return CheckpointQuant("fp8", activation_scheme="static" if static else "dynamic",
                           weight_block=None if block is None else _block(block))


_PARSERS = {"awq": _awq, "gptq": _gptq, "fp8": _fp8, "compressed-tensors": _compressed_tensors}


def checkpoint_quant(config: dict[str, Any]) -> CheckpointQuant | None:
    """The checkpoint's quantization, None for a plain one; ModelLoadError for a format that does not load."""
    q = config.get("quantization_config")
    if q is None:
        return None
    if not isinstance(q, dict):
        raise _refuse("expected an object")
    method = str(q.get("quant_method", "")).lower()
    if method not in _PARSERS:
        raise _refuse(f"quant_method {method!r} (awq, gptq, fp8 and compressed-tensors fp8 load)")
    return _PARSERS[method](q)
