"""Tiny quantized checkpoints written by the tests themselves, with each format's own quantization and packing
rules (AutoAWQ GEMM, AutoGPTQ v1, Hugging Face fp8, compressed-tensors fp8), and their dequantized twins."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from engine.model.quant import quantize_int8

AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of a word holds column AWQ_PACK_ORDER[i] (AutoAWQ)
FP8_MAX = 448.0


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """int64 words of 32 bits -> the int32 tensors checkpoints store (two's complement)."""
    words = words & 0xFFFFFFFF
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def pack_columns(codes: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """[R, C] codes 0..15 -> [R, C/8] int32, nibble i of word j holding column 8j + order[i]."""
    c = codes.to(torch.int64).reshape(codes.shape[0], -1, 8)
    words = sum(c[..., order[i]] << (4 * i) for i in range(8))
    return _to_int32(words)


def asym_int4(w_nk: torch.Tensor, g_idx: torch.Tensor, groups: int, min_zero: int = 0) -> tuple[torch.Tensor, ...]:
    """Min-max 4-bit quantization of W [N, K] per (row, group of g_idx): codes [N, K], zeros and fp16 scales
    [groups, N], and the dequantized W (fp32)."""
    n, _ = w_nk.shape
    scales, zeros = torch.empty(groups, n, dtype=torch.float16), torch.empty(groups, n, dtype=torch.int64)
    for g in range(groups):
        cols = w_nk[:, g_idx == g]
        lo, hi = cols.min(1).values.clamp(max=0), cols.max(1).values.clamp(min=0)
        scales[g] = ((hi - lo) / 15).clamp(min=1e-4).half()
        zeros[g] = (-lo / scales[g].float()).round().clamp(min_zero, 15).long()
    s, z = scales.float()[g_idx].T, zeros[g_idx].T  # per element [N, K]
    codes = (w_nk / s).round().long().add(z).clamp(0, 15)
    return codes, zeros, scales, (codes - z).float() * s


def awq_tensors(w_nk: torch.Tensor, group: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """AutoAWQ GEMM tensors of W and the W they stand for."""
    k = w_nk.shape[1]
    codes, zeros, scales, dense = asym_int4(w_nk, torch.arange(k) // group, k // group)
    return {"qweight": pack_columns(codes.T, AWQ_PACK_ORDER), "qzeros": pack_columns(zeros, AWQ_PACK_ORDER),
            "scales": scales}, dense


def gptq_tensors(w_nk: torch.Tensor, group: int, act_order: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """AutoGPTQ (v1: zeros stored minus one) tensors of W, act-order with a shuffled g_idx, and their W."""
    k = w_nk.shape[1]
    g_idx = torch.arange(k) // group
    if act_order:
        g_idx = g_idx[torch.randperm(k, generator=torch.Generator().manual_seed(k))]
    codes, zeros, scales, dense = asym_int4(w_nk, g_idx, k // group, min_zero=1)  # v1 cannot store zero 0
    rows = codes.T.to(torch.int64).reshape(k // 8, 8, -1)  # GPTQ packs 8 consecutive input columns per word
    qweight = _to_int32(sum(rows[:, i] << (4 * i) for i in range(8)))
    return {"qweight": qweight, "qzeros": pack_columns(zeros - 1, tuple(range(8))), "scales": scales,
            "g_idx": g_idx.to(torch.int32)}, dense


def fp8_tensors(w_nk: torch.Tensor, layout: str, block: int = 32) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """FP8 e4m3 tensors of W with per-tensor, per-channel or per-block scales, and their W."""
    n, k = w_nk.shape
    if layout == "tensor":
        scale = w_nk.abs().max() / FP8_MAX
        full = scale.expand(n, k)
    elif layout == "channel":
        scale = (w_nk.abs().amax(1, keepdim=True) / FP8_MAX)
        full = scale.expand(n, k)
    else:
        blocks = w_nk.reshape(n // block, block, k // block, block)
        scale = blocks.abs().amax((1, 3)) / FP8_MAX
        full = scale.repeat_interleave(block, 0).repeat_interleave(block, 1)
    w8 = (w_nk / full).to(torch.float8_e4m3fn)
    name = "weight_scale_inv" if layout == "block" else "weight_scale"
    tensors = {"weight": w8, name: scale.float().contiguous()}
    if layout == "tensor":
        tensors["input_scale"] = torch.tensor(0.05)  # static activation scheme: kept, unused on the CPU
    return tensors, w8.float() * full


FORMATS: dict[str, dict[str, Any]] = {
    "awq": {"quant_method": "awq", "bits": 4, "group_size": 32, "version": "gemm", "zero_point": True,
            "modules_to_not_convert": ["lm_head"]},
    "gptq": {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": False, "sym": False,
             "checkpoint_format": "gptq"},
    "gptq_act_order": {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": True, "sym": False},
    "fp8_tensor": {"quant_method": "fp8", "activation_scheme": "static"},
    "fp8_block": {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [32, 32]},
    "fp8_channel": {"quant_method": "compressed-tensors", "format": "float-quantized", "ignore": ["lm_head"],
                    "config_groups": {"group_0": {"targets": ["Linear"],
                                                  "weights": {"num_bits": 8, "type": "float", "strategy": "channel"},
                                                  "input_activations": {"num_bits": 8, "type": "float",
                                                                        "strategy": "token", "dynamic": True}}}},
}


def _quantize(fmt: str, w: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    if fmt == "awq":
        return awq_tensors(w, 32)
    if fmt.startswith("gptq"):
        return gptq_tensors(w, 32, act_order=fmt == "gptq_act_order")
    return fp8_tensors(w, fmt.removeprefix("fp8_"))


def _copy_files(model_dir: Path, out: Path, quantization_config: dict[str, Any] | None) -> None:
    out.mkdir()
    for file in model_dir.iterdir():
        if file.suffix != ".safetensors" and file.name not in ("model.safetensors.index.json", "config.json"):
            shutil.copy2(file, out / file.name)
    config = json.loads((model_dir / "config.json").read_text())
    if quantization_config is not None:
        config["quantization_config"] = quantization_config
    (out / "config.json").write_text(json.dumps(config, indent=2))


def write_quantized(model_dir: Path, root: Path, fmt: str) -> tuple[Path, Path, Path]:
    """The checkpoint in format `fmt` (every *_proj linear quantized, as LG's are) and two fp32 twins: one with
    those linears dequantized, one that also holds what --quantization int8 makes of every linear (int8 groups
    of 32 over FP8, and over the LM head, tied embedding included)."""
    tensors: dict[str, torch.Tensor] = {}
    for file in model_dir.glob("*.safetensors"):
        tensors.update(load_file(file))
    tied = "lm_head.weight" not in tensors
    quantized: dict[str, torch.Tensor] = {}
    twin, int8_twin = dict(tensors), dict(tensors)
    for name, t in tensors.items():
        if name.endswith("proj.weight"):
            parts, dense = _quantize(fmt, t)
            module = name.removesuffix(".weight")
            quantized.update({f"{module}.{part}": p for part, p in parts.items()})
            twin[name] = dense
            int8_twin[name] = quantize_int8(dense).dequantize() if fmt.startswith("fp8") else dense
        else:
            quantized[name] = t
            if name == "lm_head.weight" or (tied and name == "model.embed_tokens.weight"):
                int8_twin[name] = quantize_int8(t).dequantize()
    root.mkdir(parents=True, exist_ok=True)
    paths = (root / fmt, root / f"{fmt}-twin", root / f"{fmt}-int8-twin")
    for path, weights, qconfig in zip(paths, (quantized, twin, int8_twin), (FORMATS[fmt], None, None), strict=True):
        _copy_files(model_dir, path, qconfig)
        save_file({n: t.contiguous() for n, t in weights.items()}, path / "model.safetensors")
    return paths
