"""Proposer: what drafts tokens for speculative decoding (n-gram lookup, a draft model)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection

from engine.core.sequence import Sequence


class Proposer(ABC):
    """Drafts up to a given number of tokens to follow each sequence's tokens; may keep state per sequence."""

    @abstractmethod
    def propose(self, seqs: list[Sequence], num_tokens: list[int]) -> list[list[int]]:
        """Up to num_tokens[i] drafted tokens after seqs[i].token_ids (fewer, or none, where it has no guess)."""

    @abstractmethod
    def release(self, live: Collection[int]) -> None:
        """Forget the state of every sequence whose id is not in `live` (finished, aborted, preempted)."""
