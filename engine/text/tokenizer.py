"""Tokenizer: a thin wrapper over a transformers fast tokenizer, its chat template and its eos ids."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase


def _config_eos_ids(path: Path) -> set[int]:
    """eos_token_id (an int or a list) from generation_config.json and config.json next to the tokenizer."""
    ids: set[int] = set()
    for name in ("generation_config.json", "config.json"):
        file = path / name
        if not file.is_file():
            continue
        value = json.loads(file.read_text()).get("eos_token_id")
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(v for v in value if isinstance(v, int))
    return ids


class Tokenizer:
    """Encodes, decodes and renders chats with the model's own (fast) HF tokenizer."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        self.path = path
        self.hf: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(path)
        eos = {self.hf.eos_token_id} if self.hf.eos_token_id is not None else set()
        # Chat models often end a turn with a token other than the tokenizer's eos (e.g. <|im_end|>
        # vs <|endoftext|>); generation_config.json lists all of them.
        self.eos_token_ids: set[int] = eos | _config_eos_ids(path)
        self.vocab_size: int = len(self.hf)

    @property
    def has_chat_template(self) -> bool:
        """True when the tokenizer ships a chat template."""
        return bool(self.hf.chat_template)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text` (with the tokenizer's bos/eos decoration when add_special_tokens)."""
        return self.hf.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`, dropping special tokens unless asked to keep them."""
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True,
                    tools: list[dict] | None = None, **template_kwargs: Any) -> str:
        """The prompt text the chat template makes of `messages`; extra kwargs reach the template."""
        if not self.has_chat_template:
            raise ValueError(
                f"the tokenizer in {self.path} has no chat template; send a plain prompt "
                "(completions API) or use a model whose tokenizer_config.json has a chat_template"
            )
        return self.hf.apply_chat_template(messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                           tokenize=False, **template_kwargs)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            tools: list[dict] | None = None, **template_kwargs: Any) -> list[int]:
        """Prompt token ids for `messages`, as render_chat's text tokenized."""
        text = self.render_chat(messages, add_generation_prompt, tools, **template_kwargs)
        # The template already writes any bos/special tokens as text; adding them again would double them.
        return self.encode(text, add_special_tokens=False)
