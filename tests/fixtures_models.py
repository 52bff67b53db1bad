"""Tiny random-weight HF checkpoints written with transformers' own classes (shared by all tests)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
import transformers

from engine.model.gguf_loader import gguf_tokenizer_dir
from engine.model.loader import default_model_path

TINY_KINDS = ("exaone_hybrid", "exaone_global", "llama")

_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 1e6,
    "factor": 16.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,  # llama.cpp's converter assumes it (test_gguf round trips)
}

# With the default 0.02 init greedy decoding of a 64-wide model falls into one repeated token,
# and wider inits (>=0.3) make the tied exaone_global echo its input; 0.1 varies for all kinds.
_INIT_RANGE = 0.1


def _config(kind: str, vocab: dict[str, int], overrides: dict[str, Any]) -> transformers.PretrainedConfig:
    common: dict[str, Any] = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 4096,
        "initializer_range": _INIT_RANGE,
        **vocab,
    }
    if kind == "llama":
        return transformers.LlamaConfig(**{**common, "num_hidden_layers": 3, **overrides})
    if kind not in TINY_KINDS:
        raise ValueError(f"unknown tiny model kind {kind!r}; expected one of {TINY_KINDS}")
    hybrid = kind == "exaone_hybrid"
    params: dict[str, Any] = {
        **common,
        "num_hidden_layers": 4 if hybrid else 2,
        "sliding_window": 8 if hybrid else None,
        "tie_word_embeddings": not hybrid,
        "rope_parameters": dict(_LLAMA3_ROPE) if hybrid else None,
        # above the rope's original 8,192 positions, which transformers checks (and warns about otherwise)
        "max_position_embeddings": 16384 if hybrid else common["max_position_embeddings"],
        **overrides,
    }
    if "layer_types" not in overrides:
        n = params["num_hidden_layers"]
        # EXAONE 4.0's "LLLG": every 4th layer global, the rest sliding (global only without a window).
        local = [params["sliding_window"] is not None and (i + 1) % 4 != 0 for i in range(n)]
        params["layer_types"] = ["sliding_attention" if x else "full_attention" for x in local]
    return transformers.Exaone4Config(**params)


def make_tiny_model(root: Path, kind: str, dirname: str | None = None, **config_overrides: Any) -> Path:
    """Write a random-weight HF checkpoint of `kind` (exaone_hybrid, exaone_global, llama) under root.

    Uses the SmolLM2 tokenizer (vocab 49152); config_overrides update the config. Returns the dir,
    root/dirname (default: the kind and the overrides).
    """
    suffix = "".join(f"-{k}={v}" for k, v in sorted(config_overrides.items()))
    out = Path(root) / (dirname or f"{kind}{suffix}")
    out.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = gguf_tokenizer_dir(default_model_path())
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    vocab = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = _config(kind, vocab, config_overrides)

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            # RMSNorm weights init to 1; perturb them so a norm applied wrongly changes outputs.
            if "norm" in name:
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
    # 5MB shards split a tiny llama (12.6MB embedding + lm_head + layers) into several files.
    max_shard = "5MB" if kind == "llama" else "1GB"
    model.save_pretrained(out, safe_serialization=True, max_shard_size=max_shard)

    for file in tokenizer_dir.iterdir():
        if file.name != "generation_config.json":
            shutil.copy2(file, out / file.name)
    generation = {k: v for k, v in vocab.items() if k != "vocab_size"}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2))
    return out
