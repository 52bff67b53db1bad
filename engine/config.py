"""Model and engine configuration: an HF config dict becomes one spec per layer; engine limits; the dtype."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.errors import ModelLoadError
from engine.model.quant_modes import QUANTIZATION_MODES
from engine.spec_decode.config import SpeculativeConfig

# architecture name in config.json -> family; the family picks norm placement and QK-norm.
SUPPORTED_ARCHITECTURES = {
    "Exaone4ForCausalLM": "exaone4",
    "LlamaForCausalLM": "llama",
}
SCHEDULING_POLICIES = ("fcfs", "priority", "mode-aware")
EXAONE4_DEFAULT_WINDOW = 4096
EXAONE4_DEFAULT_PATTERN = 4


@dataclass(frozen=True)
class LayerSpec:
    """What one decoder layer computes: attention kind, RoPE, norm placement."""

    sliding_window: int | None  # None: global attention over the whole context
    use_rope: bool
    post_norm: bool  # EXAONE 4.0: RMSNorm after attention and after the MLP; Llama: before
    qk_norm: bool

    @property
    def kv_kind(self) -> str:
        """Key of the KV pool this layer's cache lives in."""
        return "global" if self.sliding_window is None else "sliding"


@dataclass
class ModelConfig:
    """Shapes and per-layer behaviour of a decoder model, independent of its family."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    layers: list[LayerSpec]
    eos_token_ids: list[int] = field(default_factory=list)

    @property
    def num_layers(self) -> int:
        """Number of decoder layers."""
        return len(self.layers)

    @property
    def sliding_window(self) -> int | None:
        """The window of the sliding-window layers, if the model has any."""
        windows = {spec.sliding_window for spec in self.layers if spec.sliding_window is not None}
        return windows.pop() if windows else None

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> ModelConfig:
        """Build from a config.json dict; raises ModelLoadError for what we cannot serve."""
        archs = hf.get("architectures") or [hf.get("model_type", "?")]
        arch = archs[0]
        family = SUPPORTED_ARCHITECTURES.get(arch)
        if family is None:
            raise ModelLoadError(
                f"unsupported architecture {arch!r}; supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
            )
        try:
            num_layers = int(hf["num_hidden_layers"])
            num_heads = int(hf["num_attention_heads"])
            hidden = int(hf["hidden_size"])
            head_dim = int(hf.get("head_dim") or hidden // num_heads)
            rope_theta, rope_scaling = _rope_settings(hf)
            eos = hf.get("eos_token_id")
            cfg = cls(
                architecture=arch,
                vocab_size=int(hf["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(hf["intermediate_size"]),
                num_heads=num_heads,
                num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
                head_dim=head_dim,
                rms_norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
                rope_theta=rope_theta,
                rope_scaling=rope_scaling,
                max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
                tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
                layers=_layer_specs(hf, family, num_layers),
                eos_token_ids=[] if eos is None else ([eos] if isinstance(eos, int) else list(eos)),
            )
        except KeyError as e:
            raise ModelLoadError(f"config.json lacks required field {e.args[0]!r}") from None
        return cfg


def _rope_settings(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling) from either transformers 5's rope_parameters or the older rope_scaling."""
    params = dict(hf.get("rope_parameters") or {})
    legacy = hf.get("rope_scaling") or {}
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    scaling = {k: v for k, v in {**legacy, **params}.items() if k != "rope_theta"}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type not in ("llama3", "linear"):
        raise ModelLoadError(f"unsupported rope_type {rope_type!r}; supported: default, linear, llama3")
    scaling["rope_type"] = rope_type
    return theta, scaling


def _layer_specs(hf: dict[str, Any], family: str, num_layers: int) -> list[LayerSpec]:
    """One spec per layer from layer_types, or from sliding_window_pattern (int or "LLLG")."""
    window = None
    if family == "exaone4":
        # Absent keys take Exaone4Config's defaults (window 4096, every 4th layer global), as transformers does.
        window = hf.get("sliding_window", EXAONE4_DEFAULT_WINDOW)
    is_sliding = [False] * num_layers
    if window is not None:
        layer_types = hf.get("layer_types")
        pattern = hf.get("sliding_window_pattern", EXAONE4_DEFAULT_PATTERN)
        if layer_types:
            if len(layer_types) != num_layers:
                raise ModelLoadError(f"layer_types has {len(layer_types)} entries for {num_layers} layers")
            is_sliding = [t == "sliding_attention" for t in layer_types]
        elif isinstance(pattern, str) and pattern:
            is_sliding = [pattern[i % len(pattern)].upper() == "L" for i in range(num_layers)]
            is_sliding[-1] = False  # EXAONE's convention: the last layer is always global
        elif isinstance(pattern, int) and pattern > 0:
            is_sliding = [(i + 1) % pattern != 0 for i in range(num_layers)]
    post_norm = qk_norm = family == "exaone4"
    specs = []
    for sliding in is_sliding:
        # EXAONE 4.0 hybrid: RoPE only on local layers (global NoPE); no window at all: RoPE everywhere.
        use_rope = sliding or window is None
        specs.append(LayerSpec(int(window) if sliding else None, use_rope, post_norm, qk_norm))
    return specs


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies, with llama3 or linear scaling applied as transformers does."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = cfg.rope_scaling
    if scaling is None:
        return inv_freq
    factor = float(scaling["factor"])
    if scaling["rope_type"] == "linear":
        return inv_freq / factor
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


# Batch limits per device type: CPU decode steps are compute-bound from ~16 rows (64 keeps the matmuls fed,
# 512-token chunks keep a prefill from stalling the decodes for long); a GPU wants vLLM's order of magnitude.
DEVICE_DEFAULTS: dict[str, dict[str, int]] = {
    "cpu": {"max_num_seqs": 64, "max_num_batched_tokens": 512},
    "cuda": {"max_num_seqs": 256, "max_num_batched_tokens": 8192},
}


@dataclass
class EngineConfig:
    """Scheduler and cache limits, named as vLLM names them."""

    max_model_len: int | None = None
    max_num_seqs: int | None = None  # None: DEVICE_DEFAULTS for the engine's device
    max_num_batched_tokens: int | None = None  # None: DEVICE_DEFAULTS for the engine's device
    block_size: int = 16
    kv_cache_memory: int | None = None  # bytes; CPU default picks a budget from max_model_len
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1  # ranks (one process per device) that split each layer
    enable_prefix_caching: bool = True  # reuse the K/V of full blocks of earlier prompts with the same prefix
    scheduling_policy: str = "mode-aware"  # "fcfs" | "priority" | "mode-aware" (see engine/core/scheduler.py)
    fast_lane_max_tokens: int = 1024  # mode-aware: requests without reasoning and at most this max_tokens
    fast_lane_max_wait_s: float = 60.0  # mode-aware: any request this old ranks with the fast lane (no starvation)
    fast_lane_slots: int = 2  # mode-aware: quick requests may run beyond max_num_seqs by this many, not preempting
    attention_backend: str = "auto"  # auto: triton on CUDA, torch elsewhere
    enforce_eager: bool = False  # True: no CUDA graphs for decode batches, no compiled CPU decode attention
    prepack_weights: bool = True  # CPU: linear weights in oneDNN's packed layout (~2x faster decode matmuls)
    compile: bool = False  # CPU: the decoder layers as one torch.compile graph (compiled at start)
    # vLLM's speculative_config: {"method": "ngram", "num_speculative_tokens": 4, ...} or {"model": ...}
    speculative_config: SpeculativeConfig | dict[str, Any] | str | None = None
    quantization: str = "none"  # CPU linear weights: "none" (as loaded), "int8" or "fp16" (engine.model.quant)

    def __post_init__(self) -> None:
        if self.scheduling_policy not in SCHEDULING_POLICIES:
            raise ValueError(f"scheduling_policy must be one of {', '.join(SCHEDULING_POLICIES)}, "
                             f"got {self.scheduling_policy!r}")
        if self.fast_lane_slots < 0:
            raise ValueError(f"fast_lane_slots must be 0 or more, got {self.fast_lane_slots}")
        if self.quantization not in QUANTIZATION_MODES:
            raise ValueError(f"quantization must be one of {', '.join(QUANTIZATION_MODES)}, got {self.quantization!r}")
        if self.compile and self.tensor_parallel_size > 1:
            raise ValueError("--compile is for a single rank; it cannot be combined with --tensor-parallel-size")
        self.speculative_config = SpeculativeConfig.parse(self.speculative_config)
        if self.speculative_config is not None and self.tensor_parallel_size > 1:
            # verification steps desynchronised the ranks (a gloo recv timed out): refused until fixed
            raise ValueError("--speculative-config cannot be combined with --tensor-parallel-size yet")

    @property
    def max_running_seqs(self) -> int:
        """Most sequences a step can hold: max_num_seqs, plus the fast lane's headroom under mode-aware."""
        assert self.max_num_seqs is not None, "fill_device_defaults first"
        return self.max_num_seqs + (self.fast_lane_slots if self.scheduling_policy == "mode-aware" else 0)

    def fill_device_defaults(self, device: torch.device) -> None:
        """Set the batch limits left unset to the defaults of this device type."""
        for name, value in DEVICE_DEFAULTS["cuda" if device.type == "cuda" else "cpu"].items():
            if getattr(self, name) is None:
                setattr(self, name, value)


def resolve_device(device: str | torch.device) -> torch.device:
    """The device with CUDA's index made explicit, and made this thread's current one: Triton launches on the
    current device whatever tensors it gets, so `cuda:1` would otherwise run kernels on device 0. Call it on
    every thread that runs the model (the current device is per thread)."""
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if resolved.index is None:
            resolved = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(resolved)
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """fp32 on CPU (exact; bf16 changes outputs), bf16 on GPU, unless asked otherwise."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(names)}")
    return names[dtype]

