"""Prompt lookup (n-gram) drafting: the tokens that followed the latest earlier occurrence of the context's suffix.

Each sequence keeps an index from every n-gram of its tokens (prompt and output) to the latest position
where it was followed by a token, extended by the tokens added since the last step, so a lookup costs a
few dict probes instead of a scan of the context.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from engine.core.sequence import Sequence
from engine.spec_decode.proposer import Proposer


@dataclass
class _NgramIndex:
    """n -> {n-gram: start of its latest occurrence that a token follows}, over token_ids[:num_indexed]."""

    starts: dict[int, dict[tuple[int, ...], int]]
    num_indexed: int = 0


class NgramProposer(Proposer):
    """Drafts by matching the longest suffix (prompt_lookup_max down to prompt_lookup_min tokens) earlier on."""

    def __init__(self, min_n: int, max_n: int) -> None:
        self.min_n, self.max_n = min_n, max_n
        self._indexes: dict[int, _NgramIndex] = {}

    def propose(self, seqs: list[Sequence], num_tokens: list[int]) -> list[list[int]]:
        """For each sequence, the tokens after the latest earlier match of its longest matching suffix."""
        return [self._lookup(s, k) if k > 0 else [] for s, k in zip(seqs, num_tokens, strict=True)]

    def release(self, live: Collection[int]) -> None:
        """Drop the indexes of sequences that are no longer running."""
        for seq_id in [i for i in self._indexes if i not in live]:
            del self._indexes[seq_id]

    def _lookup(self, seq: Sequence, k: int) -> list[int]:
        tokens = seq.token_ids
        index = self._indexes.get(seq.seq_id)
        if index is None:
            index = self._indexes[seq.seq_id] = _NgramIndex({n: {} for n in range(self.min_n, self.max_n + 1)})
        self._extend(index, tokens)
        for n in range(min(self.max_n, len(tokens) - 1), self.min_n - 1, -1):
            start = index.starts[n].get(tuple(tokens[-n:]))
            if start is not None:
                return tokens[start + n : start + n + k]
        return []

    @staticmethod
    def _extend(index: _NgramIndex, tokens: list[int]) -> None:
        """Index the n-grams that the tokens added since the last call now follow."""
        for end in range(max(index.num_indexed, 1), len(tokens)):  # an n-gram ending before `end` is followed
            for n, starts in index.starts.items():
                if end >= n:
                    starts[tuple(tokens[end - n : end])] = end - n
        index.num_indexed = max(index.num_indexed, len(tokens))
