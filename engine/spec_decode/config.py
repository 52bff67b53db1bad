"""SpeculativeConfig: vLLM's `--speculative-config` dict, validated."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

METHODS = ("ngram", "draft_model")
# Measured on a 2-core AVX2 CPU (benchmarks/spec_decode.py, RESULTS.md "Speculative decoding"): from 4 running
# sequences on, n-gram drafting gains 5% on copying prompts and loses 6-10% on chat, as the batch already
# shares the weight reads. CUDA's is not measured yet (no GPU lent): a GPU step stays weight-bound far longer.
CPU_DISABLE_BY_BATCH_SIZE = 4
CUDA_DISABLE_BY_BATCH_SIZE = 32


@dataclass
class SpeculativeConfig:
    """How to draft: `ngram` (prompt lookup) or `draft_model` (a smaller model of the same tokenizer)."""

    method: str = "ngram"
    num_speculative_tokens: int = 4
    prompt_lookup_min: int = 2  # ngram: shortest suffix looked up in the context
    prompt_lookup_max: int = 4  # ngram: longest suffix looked up (the longest match wins)
    model: str | None = None  # draft_model: hub id, directory or .gguf, as --model
    # No drafting in a step with at least this many running sequences (vLLM's name); None: the device default.
    disable_by_batch_size: int | None = None
    draft_kv_cache_memory: int | None = None  # bytes for the draft model's KV cache; None: sized like the target's

    def __post_init__(self) -> None:
        if self.model is not None and self.method == "ngram":
            self.method = "draft_model"  # vLLM infers the method from `model`
        checks = [
            (self.method in METHODS, f"speculative method must be one of {', '.join(METHODS)}, got {self.method!r}"),
            (isinstance(self.num_speculative_tokens, int) and 1 <= self.num_speculative_tokens <= 16,
             f"num_speculative_tokens must be an integer in [1, 16], got {self.num_speculative_tokens!r}"),
            (1 <= self.prompt_lookup_min <= self.prompt_lookup_max,
             f"need 1 <= prompt_lookup_min ({self.prompt_lookup_min}) <= prompt_lookup_max "
             f"({self.prompt_lookup_max})"),
            (self.method != "draft_model" or bool(self.model), "speculative method draft_model needs a `model`"),
            (self.disable_by_batch_size is None or self.disable_by_batch_size >= 1,
             f"disable_by_batch_size must be at least 1, got {self.disable_by_batch_size}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @classmethod
    def parse(cls, value: SpeculativeConfig | dict[str, Any] | str | None) -> SpeculativeConfig | None:
        """From a SpeculativeConfig, a dict or a JSON object string (the CLI's); None stays None."""
        if value is None or isinstance(value, SpeculativeConfig):
            return value
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise ValueError(f"--speculative-config is not valid JSON: {e}") from e
        if not isinstance(value, dict):
            raise ValueError("the speculative config must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown speculative config keys: {', '.join(unknown)} "
                             f"(known: {', '.join(sorted(known))})")
        return cls(**value)

    def batch_limit(self, device_type: str) -> int:
        """Running sequences from which a step does not draft."""
        if self.disable_by_batch_size is not None:
            return self.disable_by_batch_size
        return CUDA_DISABLE_BY_BATCH_SIZE if device_type == "cuda" else CPU_DISABLE_BY_BATCH_SIZE
