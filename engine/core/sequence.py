"""One sequence (one sample of a request): its tokens, progress and KV blocks."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from engine.core.outputs import TokenLogprob
from engine.core.sampling_params import SamplingParams
from engine.kv.block_pool import BlockHash
from engine.kv.kv_cache import BlockTable

if TYPE_CHECKING:
    from engine.text.detokenizer import IncrementalDetokenizer


class SequenceStatus(enum.Enum):
    """Where a sequence is in its life."""

    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Sequence:
    """Token ids (prompt then output), how many have K/V in the cache, and the blocks holding them."""

    seq_id: int
    request_id: str
    index: int  # which of the request's n samples
    token_ids: list[int]
    num_prompt_tokens: int
    params: SamplingParams
    detokenizer: IncrementalDetokenizer
    generator: torch.Generator | None = None
    num_computed_tokens: int = 0
    status: SequenceStatus = SequenceStatus.WAITING
    block_tables: dict[str, BlockTable] = field(default_factory=dict)
    block_hashes: list[BlockHash] = field(default_factory=list)  # content keys of its full blocks, chained
    num_cached_tokens: int | None = None  # prompt tokens the prefix cache supplied when first scheduled
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    arrival_time: float = field(default_factory=time.monotonic)
    first_scheduled_time: float | None = None
    num_computed_before_preemption: int = 0  # while preempted: what it had computed (recompute accounting)
    # With params.prompt_logprobs: one entry per prompt token computed so far (None for the first).
    prompt_logprobs: list[TokenLogprob | None] = field(default_factory=lambda: [None])
    # Samples 2..n of a request wait for sample 1's prefill and fork its blocks.
    children: list[Sequence] = field(default_factory=list)
    # Drafted tokens this step verifies after the last token (speculative decoding); never in token_ids.
    spec_token_ids: list[int] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        """Prompt plus output tokens."""
        return len(self.token_ids)

    def step_token_ids(self, start: int, num: int) -> list[int]:
        """The ids of the num tokens a step computes from position start, drafted ones included."""
        if self.spec_token_ids:
            return [*self.token_ids[start:], *self.spec_token_ids][:num]
        return self.token_ids[start : start + num]

    @property
    def output_token_ids(self) -> list[int]:
        """Tokens generated so far."""
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        """How many tokens were generated so far."""
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        """True once a finish reason is set."""
        return self.status is SequenceStatus.FINISHED
