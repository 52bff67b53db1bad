"""engine.text.tokenizer: encode/decode, chat templates (kwargs, tools), eos ids from the model dir."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import transformers

from engine.model.gguf_loader import gguf_tokenizer_dir
from engine.text.tokenizer import Tokenizer

CHAT = [{"role": "user", "content": "What is the capital of France?"}]

# Exercises the pass-through of template kwargs and tools, which SmolLM2's own template ignores.
THINKING_TEMPLATE = (
    "{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer_dir(default_gguf: Path) -> Path:
    """The default model's tokenizer as an HF directory (converted from the GGUF once, cached)."""
    return gguf_tokenizer_dir(default_gguf)


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir: Path) -> Tokenizer:
    return Tokenizer(tokenizer_dir)


def _copy(tokenizer_dir: Path, target: Path) -> Path:
    shutil.copytree(tokenizer_dir, target)
    return target


def test_encode_decode_round_trip(tokenizer: Tokenizer) -> None:
    text = "Hello, world! 안녕하세요 🎉 <|im_end|> tail"
    ids = tokenizer.encode(text)
    assert ids == tokenizer.hf.encode(text)
    assert tokenizer.decode(ids, skip_special_tokens=False) == text
    assert tokenizer.decode(ids) == text.replace("<|im_end|>", "")
    assert tokenizer.hf.is_fast
    assert tokenizer.vocab_size == len(tokenizer.hf) == 49152


def test_chat_template_matches_transformers(tokenizer: Tokenizer) -> None:
    assert tokenizer.has_chat_template
    text = tokenizer.render_chat(CHAT)
    assert text == tokenizer.hf.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    ids = tokenizer.apply_chat_template(CHAT)
    assert ids == tokenizer.hf.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)["input_ids"]
    assert not tokenizer.render_chat(CHAT, add_generation_prompt=False).endswith("assistant\n")


def test_template_kwargs_and_tools_reach_the_template(tokenizer_dir: Path, tmp_path: Path) -> None:
    target = _copy(tokenizer_dir, tmp_path / "tok")
    hf = transformers.AutoTokenizer.from_pretrained(target)
    hf.chat_template = THINKING_TEMPLATE
    hf.save_pretrained(target)
    tokenizer = Tokenizer(target)
    assert "<think>" not in tokenizer.render_chat(CHAT)
    off = tokenizer.render_chat(CHAT, enable_thinking=False)
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert tokenizer.decode(tokenizer.apply_chat_template(CHAT, enable_thinking=False), False) == off
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    assert tokenizer.render_chat(CHAT, tools=tools).startswith("TOOLS:get_weather;<|im_start|>user")


def test_missing_chat_template_is_a_clear_error(tokenizer_dir: Path, tmp_path: Path) -> None:
    target = _copy(tokenizer_dir, tmp_path / "tok")
    (target / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((target / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (target / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = Tokenizer(target)
    assert not tokenizer.has_chat_template
    with pytest.raises(ValueError, match="no chat template"):
        tokenizer.apply_chat_template(CHAT)


def test_eos_ids_merge_tokenizer_generation_config_and_config(tokenizer_dir: Path, tmp_path: Path) -> None:
    assert Tokenizer(tokenizer_dir).eos_token_ids == {2}
    target = _copy(tokenizer_dir, tmp_path / "tok")
    (target / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 5]}))
    (target / "config.json").write_text(json.dumps({"eos_token_id": 7}))
    assert Tokenizer(target).eos_token_ids == {2, 5, 7}
