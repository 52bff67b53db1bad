"""A tiny EXAONE 4.0 checkpoint for mode-switching tests: random weights, EXAONE's tokens and chat format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import transformers
from fixtures_models import make_tiny_model

from engine.model.gguf_loader import gguf_tokenizer_dir
from engine.model.loader import default_model_path
from engine.modes.chat_templates import EXAONE4_TEMPLATE

ROLE_TOKENS = ["[|system|]", "[|user|]", "[|assistant|]", "[|tool|]", "[|endofturn|]"]
# As in the real EXAONE 4.0 tokenizer, the tags are added tokens (one id each) but not special ones,
# so they survive skip_special_tokens decoding and the parsers see them in the text.
TAG_TOKENS = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_result>", "</tool_result>"]
EOS_TOKEN = "[|endofturn|]"
# Real checkpoints pad the embedding past the tokenizer; padding here keeps that case covered.
VOCAB_MULTIPLE = 64


def exaone_tokenizer() -> transformers.PreTrainedTokenizerBase:
    """The SmolLM2 tokenizer with EXAONE's role and tag tokens added and EXAONE's chat template."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf_tokenizer_dir(default_model_path()))
    tokenizer.add_special_tokens({"additional_special_tokens": ROLE_TOKENS})
    tokenizer.add_tokens(TAG_TOKENS, special_tokens=False)
    tokenizer.eos_token = EOS_TOKEN
    tokenizer.pad_token = EOS_TOKEN
    tokenizer.chat_template = EXAONE4_TEMPLATE
    return tokenizer


def make_exaone_model(root: Path, dirname: str | None = None, **overrides: Any) -> Path:
    """Write a tiny random-weight EXAONE 4.0 (hybrid attention) checkpoint with EXAONE's tokenizer under root."""
    tokenizer = exaone_tokenizer()
    vocab_size = -(-len(tokenizer) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    ids = {
        "vocab_size": vocab_size,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.convert_tokens_to_ids(EOS_TOKEN),
        "pad_token_id": tokenizer.convert_tokens_to_ids(EOS_TOKEN),
    }
    out = make_tiny_model(Path(root) / "exaone4", "exaone_hybrid", dirname, **{**ids, **overrides})
    # make_tiny_model copied the plain SmolLM2 tokenizer files; replace them with EXAONE's.
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        (out / name).unlink(missing_ok=True)
    tokenizer.save_pretrained(out)
    generation = {k: v for k, v in ids.items() if k != "vocab_size"}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2))
    return out
