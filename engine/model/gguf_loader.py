"""GGUF checkpoints: HF-style config, dequantized HF-named weights and a cached HF tokenizer."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from engine.errors import ModelLoadError
from engine.model.gguf_quant import KEPT_TYPES, gguf_blocks
from engine.model.quant import QuantizedWeight

# GGUF arch -> (HF architecture class, HF model_type); other archs pass through as found so
# the model code can reject them with its list of supported architectures.
_ARCHS: dict[str, tuple[str, str]] = {
    "llama": ("LlamaForCausalLM", "llama"),
    "exaone4": ("Exaone4ForCausalLM", "exaone4"),
}

# Metadata key (after "<arch>.") -> HF config key; the same names for every llama-like arch.
_HPARAMS: dict[str, str] = {
    "context_length": "max_position_embeddings",
    "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size",
    "block_count": "num_hidden_layers",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "vocab_size": "vocab_size",
}

_TOP_LEVEL_NAMES: dict[str, str] = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}

# blk.N.<gguf> -> model.layers.N.<hf>. ffn_norm (llama pre-norm) and post_attention_norm
# (exaone4 post-norm) both land on HF's post_attention_layernorm, as in llama.cpp's tensor map.
_LAYER_NAMES: dict[str, str] = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}

# Encoded in the config as rope_parameters, not a model weight.
_ROPE_FREQS = "rope_freqs.weight"

_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def _reader(path: Path) -> gguf.GGUFReader:
    try:
        stat = path.stat()
        return _cached_reader(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise ModelLoadError(f"cannot read GGUF file {path}: {exc}") from exc


# Parsing the metadata (49k vocab strings) takes ~2 s and start-up reads config, tensor count,
# weights and tokenizer from the same file; size and mtime in the key catch a replaced file.
@functools.lru_cache(maxsize=2)
def _cached_reader(path: str, size: int, mtime_ns: int) -> gguf.GGUFReader:
    return gguf.GGUFReader(path)


def _field(reader: gguf.GGUFReader, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def _architecture(reader: gguf.GGUFReader, path: Path) -> str:
    arch = _field(reader, "general.architecture")
    if not arch:
        raise ModelLoadError(f"GGUF file {path} has no general.architecture")
    return arch


def gguf_config(path: Path) -> dict[str, Any]:
    """Build an HF-style config dict (as config.json would hold it) from GGUF metadata."""
    reader = _reader(path)
    arch = _architecture(reader, path)
    hf_arch, model_type = _ARCHS.get(arch, (arch, arch))
    config: dict[str, Any] = {"architectures": [hf_arch], "model_type": model_type, "hidden_act": "silu"}
    for key, hf_key in _HPARAMS.items():
        value = _field(reader, f"{arch}.{key}")
        if value is not None:
            config[hf_key] = value
    if "vocab_size" not in config:
        config["vocab_size"] = len(reader.fields["tokenizer.ggml.tokens"].data)
    config.setdefault("num_key_value_heads", config.get("num_attention_heads"))
    # llama.cpp writes key_length only when head_dim differs from hidden/heads; rope.dimension_count
    # equals head_dim for full-rotary models such as llama and exaone4.
    head_dim = _field(reader, f"{arch}.attention.key_length") or _field(reader, f"{arch}.rope.dimension_count")
    if head_dim is None and "num_attention_heads" in config:
        head_dim = config["hidden_size"] // config["num_attention_heads"]
    config["head_dim"] = head_dim
    config["tie_word_embeddings"] = all(t.name != "output.weight" for t in reader.tensors)
    config["rope_parameters"] = _rope_parameters(reader, arch, config)
    config["rope_theta"] = config["rope_parameters"]["rope_theta"]
    if arch == "exaone4":
        config.update(_layer_types(reader, arch, config["num_hidden_layers"]))
    for name in ("bos", "eos", "padding"):
        token_id = _field(reader, f"tokenizer.ggml.{name}_token_id")
        if token_id is not None:
            config["pad_token_id" if name == "padding" else f"{name}_token_id"] = token_id
    return config


def _layer_types(reader: gguf.GGUFReader, arch: str, n_layers: int) -> dict[str, Any]:
    window = _field(reader, f"{arch}.attention.sliding_window")
    pattern = _field(reader, f"{arch}.attention.sliding_window_pattern")
    if not window:
        return {"sliding_window": None, "layer_types": ["full_attention"] * n_layers}
    if isinstance(pattern, int):
        # Gemma-style period: every pattern-th layer is global.
        is_local = [(i + 1) % pattern != 0 for i in range(n_layers)]
    elif isinstance(pattern, list) and len(pattern) == n_layers:
        is_local = [bool(p) for p in pattern]
    else:
        raise ModelLoadError(f"GGUF has sliding_window={window} but no usable sliding_window_pattern")
    kinds = ["sliding_attention" if local else "full_attention" for local in is_local]
    return {"sliding_window": window, "layer_types": kinds}


def _rope_parameters(reader: gguf.GGUFReader, arch: str, config: dict[str, Any]) -> dict[str, Any]:
    theta = float(_field(reader, f"{arch}.rope.freq_base") or 10000.0)
    freqs = next((t for t in reader.tensors if t.name == _ROPE_FREQS), None)
    if freqs is not None:
        return _llama3_from_rope_freqs(np.asarray(freqs.data, dtype=np.float32), theta, config)
    scaling = _field(reader, f"{arch}.rope.scaling.type")
    if scaling in (None, "none"):
        return {"rope_type": "default", "rope_theta": theta}
    params: dict[str, Any] = {
        "rope_type": scaling,
        "rope_theta": theta,
        "factor": float(_field(reader, f"{arch}.rope.scaling.factor")),
    }
    if (orig := _field(reader, f"{arch}.rope.scaling.original_context_length")) is not None:
        params["original_max_position_embeddings"] = orig
    return params


def _llama3_from_rope_freqs(factors: np.ndarray, theta: float, config: dict[str, Any]) -> dict[str, Any]:
    """Recover llama3 rope_parameters from llama.cpp's per-frequency divisors (rope_freqs)."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    # llama.cpp bakes llama3 scaling into this tensor; its converter uses the llama3 defaults
    # below for anything the HF config leaves out, so try them and check the result matches.
    params = {
        "rope_type": "llama3",
        "rope_theta": theta,
        "factor": float(factors.max()),
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    dim = config["head_dim"]
    probe = LlamaConfig(
        hidden_size=config["hidden_size"],
        num_attention_heads=config["num_attention_heads"],
        head_dim=dim,
        max_position_embeddings=max(config.get("max_position_embeddings", 0), 8193),
        rope_parameters=params,
    )
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](probe, "cpu")
    base = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    if not np.allclose((base / scaled).numpy(), factors, rtol=1e-4):
        raise ModelLoadError("GGUF rope_freqs tensor does not match llama3 rope scaling with default factors")
    return params


def _hf_name(gguf_name: str) -> str | None:
    stem, _, suffix = gguf_name.rpartition(".")
    if stem in _TOP_LEVEL_NAMES:
        return f"{_TOP_LEVEL_NAMES[stem]}.{suffix}"
    match = _LAYER_RE.fullmatch(gguf_name)
    if match and match.group(2) in _LAYER_NAMES:
        return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}.{match.group(3)}"
    return None


def unpermute_qk(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's rotary row interleave of a llama q/k projection (n_head = heads of that proj)."""
    # convert_hf_to_gguf.py permute(): reshape(n_head, 2, d/2, ...).swapaxes(1, 2).
    half = weight.shape[0] // n_head // 2
    return weight.reshape(n_head, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_weight_count(path: Path) -> int:
    """Number of tensors gguf_weights yields for this file."""
    return sum(t.name != _ROPE_FREQS for t in _reader(path).tensors)


def gguf_weights(path: Path, dtype: torch.dtype,
                 keep_quantized: bool = False) -> Iterator[tuple[str, torch.Tensor | QuantizedWeight]]:
    """Yield (HF name, dequantized CPU tensor in HF shape and dtype) for every GGUF tensor; with
    keep_quantized, Q8_0/Q4_0/Q4_1 matrices come as QuantizedWeight (exact, no fp32 copy)."""
    reader = _reader(path)
    arch = _architecture(reader, path)
    n_head = _field(reader, f"{arch}.attention.head_count")
    n_kv_head = _field(reader, f"{arch}.attention.head_count_kv") or n_head
    for tensor in reader.tensors:
        if tensor.name == _ROPE_FREQS:
            continue
        name = _hf_name(tensor.name)
        if name is None:
            raise ModelLoadError(f"GGUF tensor {tensor.name!r} in {path} has no known HF name")
        shape = tuple(int(d) for d in reversed(tensor.shape))  # GGUF lists dims fastest-first
        if keep_quantized and tensor.tensor_type in KEPT_TYPES and len(shape) == 2:
            weight = gguf_blocks(tensor.data, tensor.tensor_type, shape[0])
            if arch == "llama" and (".attn_q." in tensor.name or ".attn_k." in tensor.name):
                heads = n_head if ".attn_q." in tensor.name else n_kv_head
                weight = QuantizedWeight(*(None if t is None else torch.from_numpy(unpermute_qk(t.numpy(), heads))
                                           for t in (weight.q, weight.scale, weight.offset)))
            yield name, weight
            continue
        try:
            array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError as exc:
            raise ModelLoadError(
                f"GGUF tensor {tensor.name} uses unsupported quantization {tensor.tensor_type.name}"
            ) from exc
        array = array.reshape(shape)
        if arch == "llama" and ".attn_q." in tensor.name:
            array = unpermute_qk(array, n_head)
        elif arch == "llama" and ".attn_k." in tensor.name:
            array = unpermute_qk(array, n_kv_head)
        # torch.tensor copies: unquantized tensors are views of the read-only memory map.
        yield name, torch.tensor(array).to(dtype)


def _cache_root() -> Path:
    return Path(os.environ.get("EXAONE_SERVE_CACHE", "~/.cache/exaone-serve")).expanduser()


def gguf_tokenizer_dir(path: Path) -> Path:
    """Convert the GGUF's embedded tokenizer to an HF tokenizer dir once; later calls reuse it."""
    from transformers import AutoTokenizer, GenerationConfig

    path = path.resolve()
    stat = path.stat()
    key = hashlib.sha256(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:32]
    target = _cache_root() / "tokenizers" / key
    if (target / "tokenizer_config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        except (ValueError, KeyError, OSError) as exc:
            raise ModelLoadError(f"cannot convert the tokenizer embedded in {path}: {exc}") from exc
        reader = _reader(path)
        # transformers copies the template today; set it from metadata so that never silently changes.
        template = _field(reader, "tokenizer.chat_template")
        if template:
            tokenizer.chat_template = template
        tokenizer.save_pretrained(tmp)
        ids = {
            f"{n}_token_id": _field(reader, f"tokenizer.ggml.{n}_token_id") for n in ("bos", "eos")
        }
        GenerationConfig(**ids).save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:
            # Another process finished the same conversion first; theirs is as good as ours.
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
