"""IncrementalProcessor: a logits processor that follows one sample's output token by token and can step back.

Speculative decoding calls a sample's processors on its drafted tokens before they are verified, so the
output a processor sees next may be shorter than, or differ in its last tokens from, what it saw last time.
A processor keeps a snapshot of its state before each of its recent tokens and returns to the one where
the outputs part; deeper than its history, it starts over from the first token.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from typing import Any

import torch

# Snapshots kept: a rejected draft is at most num_speculative_tokens (<= 16) tokens deep.
HISTORY = 32


class IncrementalProcessor(ABC):
    """Base of the stateful processors: `sync(output_ids)` brings the state to that output, then `mask` acts."""

    def __init__(self) -> None:
        self._ids: list[int] = []
        self._history: deque[Any] = deque(maxlen=HISTORY)
        self._reset()

    @abstractmethod
    def _reset(self) -> None:
        """The state before the first output token."""

    @abstractmethod
    def _advance(self, token: int) -> None:
        """Take one more output token."""

    @abstractmethod
    def _snapshot(self) -> Any:
        """What `_restore` needs to return to the current state (taken before each token)."""

    @abstractmethod
    def _restore(self, state: Any) -> None:
        """Return to a state `_snapshot` took; later snapshots are discarded."""

    @abstractmethod
    def mask(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        """Constrain one row's logits for the token after output_ids (the state is in sync)."""

    def __call__(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        self.sync(output_ids)
        return self.mask(output_ids, logits)

    def sync(self, output_ids: list[int]) -> None:
        """Bring the state to the end of output_ids: step back to where it parts from what was seen, then on."""
        seen = self._ids
        common = min(len(seen), len(output_ids))
        # only the recent tokens can differ (drafts); the outputs share everything before them
        for j in range(max(0, len(seen) - len(self._history)), common):
            if seen[j] != output_ids[j]:
                common = j
                break
        back = len(seen) - common
        if back > len(self._history):
            self._reset()
            self._history.clear()
            seen.clear()
        elif back:
            for _ in range(back - 1):
                self._history.pop()
            self._restore(self._history.pop())
            del seen[common:]
        for token in output_ids[len(seen):]:
            self._history.append(self._snapshot())
            self._advance(token)
            seen.append(token)
