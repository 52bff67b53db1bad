"""Per-request sampling parameters, named as vLLM names them."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

# (output_token_ids so far, logits row [vocab]) -> logits row; e.g. a grammar mask.
LogitsProcessor = Callable[[list[int], torch.Tensor], torch.Tensor]


@dataclass
class SamplingParams:
    """How to sample one request's completions; validated on construction."""

    n: int = 1
    max_tokens: int | None = 16
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None  # signed 64-bit, as OpenAI's; sample i of n uses seed + i (mod 2**64)
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None  # logprob of each prompt token (and its top-k) given the ones before
    logit_bias: dict[int, float] | None = None  # token id -> bias in [-100, 100] added to its logit
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logits_processors: list[LogitsProcessor] = field(default_factory=list)
    # Stateful processors (grammar matchers, thinking budgets) are built once per sample from these.
    logits_processor_factories: list[Callable[[], LogitsProcessor]] = field(default_factory=list)
    # For the scheduler (engine/core/scheduler.py): lower priority values run first (vLLM passes it beside the
    # params); a reasoning request is in the slow lane of the mode-aware policy.
    priority: int = 0
    reasoning: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in self.stop if s]
        if self.top_k is None or self.top_k < 0:
            self.top_k = 0
        checks = [
            (self.n >= 1, f"n must be at least 1, got {self.n}"),
            (self.max_tokens is None or self.max_tokens >= 1, f"max_tokens must be at least 1, got {self.max_tokens}"),
            (self.min_tokens >= 0, f"min_tokens must be >= 0, got {self.min_tokens}"),
            (self.max_tokens is None or self.min_tokens <= self.max_tokens,
             f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})"),
            (self.temperature >= 0.0 and math.isfinite(self.temperature),
             f"temperature must be >= 0 and finite, got {self.temperature}"),
            (0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}"),
            (0.0 <= self.min_p <= 1.0, f"min_p must be in [0, 1], got {self.min_p}"),
            (-2.0 <= self.presence_penalty <= 2.0, f"presence_penalty must be in [-2, 2], got {self.presence_penalty}"),
            (-2.0 <= self.frequency_penalty <= 2.0, f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}"),
            (0.0 < self.repetition_penalty < math.inf, f"repetition_penalty must be > 0 and finite, got {self.repetition_penalty}"),
            (self.seed is None or -(2**63) <= self.seed < 2**63, f"seed must be a signed 64-bit integer, got {self.seed}"),
            (all(-100.0 <= b <= 100.0 for b in (self.logit_bias or {}).values()),
             "logit_bias values must be in [-100, 100]"),
            (self.logprobs is None or 0 <= self.logprobs <= 20, f"logprobs must be in [0, 20], got {self.logprobs}"),
            (self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= 20,
             f"prompt_logprobs must be in [0, 20], got {self.prompt_logprobs}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def greedy(self) -> bool:
        """True when sampling reduces to argmax."""
        return self.temperature < 1e-5 or self.top_k == 1
