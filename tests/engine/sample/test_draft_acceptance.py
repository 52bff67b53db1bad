"""Rejection sampling of drafted tokens (speculative decoding): the tokens a drafted row yields are distributed
as the row's own distribution, whatever the draft, as vLLM's statistical tests check; greedy rows keep the
argmax; seeded rows stay reproducible."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from engine.core.sampling_params import SamplingParams
from engine.sample.sampler import Sampler, SamplingRow

LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0, 1.5, 0.2])
N = 40_000


def drafted_draws(draft: int, seed: int = 0, **params: object) -> Counter[int]:
    """Token counts of N drafted rows of the same logits (one batched call)."""
    torch.manual_seed(seed)
    rows = [SamplingRow(SamplingParams(**params), [0], [], None, draft=draft) for _ in range(N)]
    out = Sampler(set())(LOGITS.expand(N, -1).contiguous(), rows)
    return Counter(out.token_ids.tolist())


def target(temperature: float, top_k: int = -1) -> torch.Tensor:
    logits = LOGITS / temperature
    if top_k > 0:
        logits = logits.masked_fill(logits < logits.topk(top_k).values[-1], float("-inf"))
    return torch.softmax(logits, -1)


@pytest.mark.parametrize("draft", [0, 5, 3])  # the likeliest token, an unlikely one, one in between
@pytest.mark.parametrize(("temperature", "top_k"), [(0.7, -1), (1.3, 4)])
def test_drafted_rows_sample_the_target_distribution(draft, temperature, top_k):
    counts = drafted_draws(draft, temperature=temperature, top_k=top_k)
    expected = target(temperature, top_k) * N
    support = [t for t in range(len(LOGITS)) if expected[t] > 0]
    assert all(counts[t] == 0 for t in range(len(LOGITS)) if t not in support)  # e.g. a draft top_k removed
    chi2 = sum((counts[t] - expected[t].item()) ** 2 / expected[t].item() for t in support)
    assert chi2 < 35, (chi2, counts)  # <= 7 degrees of freedom: p(chi2 > 35) is below 2e-5


def test_a_sampler_that_kept_every_draft_would_fail_the_check(monkeypatch):
    def keep_all(probs, rows, drafted):
        keep = torch.zeros(len(probs), dtype=torch.bool)
        keep[drafted] = True
        drafts = torch.full((len(probs),), -1, dtype=torch.long)
        drafts[drafted] = torch.tensor([r.draft for r in rows])
        return keep, drafts

    monkeypatch.setattr(Sampler, "_accept_drafts", staticmethod(keep_all))
    counts = drafted_draws(5, temperature=0.7)
    expected = target(0.7) * N
    assert sum((counts[t] - expected[t].item()) ** 2 / expected[t].item() for t in range(len(LOGITS))) > 35


def test_greedy_rows_accept_only_the_argmax_and_seeded_rows_repeat():
    greedy = [SamplingRow(SamplingParams(temperature=0.0), [0], [], None, draft=d) for d in (0, 6)]
    assert Sampler(set())(LOGITS.expand(2, -1).contiguous(), greedy).token_ids.tolist() == [0, 0]

    def seeded() -> list[int]:
        rows = [SamplingRow(SamplingParams(temperature=1.0, seed=3), [0], [], torch.Generator().manual_seed(3),
                            draft=d) for d in range(8)]
        return Sampler(set())(LOGITS.expand(8, -1).contiguous(), rows).token_ids.tolist()

    assert seeded() == seeded()
