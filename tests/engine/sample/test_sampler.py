"""engine.sample.sampler: greedy, seeds independent of the batch, top-k/top-p/min-p, penalties, min_tokens, logprobs."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from engine.core.sampling_params import SamplingParams
from engine.sample.sampler import Sampler, SamplerOutput, SamplingRow

V = 16
EOS = 3


def row(prompt: list[int] | None = None, output: list[int] | None = None, seed: int | None = None,
        **params: object) -> SamplingRow:
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return SamplingRow(SamplingParams(seed=seed, **params), prompt or [0], output or [], generator)


def sample(logits: torch.Tensor, rows: list[SamplingRow]) -> SamplerOutput:
    return Sampler({EOS})(logits, rows)


def draws(logits: torch.Tensor, n: int, **params: object) -> Counter[int]:
    """Token counts of n independent samples from the same logits row (one batched call)."""
    torch.manual_seed(0)
    out = sample(logits.expand(n, -1).contiguous(), [row(**params) for _ in range(n)])
    return Counter(out.token_ids.tolist())


@pytest.fixture
def logits() -> torch.Tensor:
    return torch.randn(6, V, generator=torch.Generator().manual_seed(0)) * 3


def test_greedy_is_argmax_and_leaves_logits_alone(logits: torch.Tensor) -> None:
    before = logits.clone()
    out = sample(logits, [row(temperature=0.0) for _ in range(6)])
    assert torch.equal(out.token_ids, logits.argmax(-1))
    assert out.top_token_ids is None and out.logprobs.shape == (6,)
    assert torch.equal(logits, before)


def test_top_k_1_and_tiny_top_p_are_greedy(logits: torch.Tensor) -> None:
    torch.manual_seed(1)
    for _ in range(20):
        assert torch.equal(sample(logits, [row(top_k=1) for _ in range(6)]).token_ids, logits.argmax(-1))
        assert torch.equal(sample(logits, [row(top_p=1e-6) for _ in range(6)]).token_ids, logits.argmax(-1))


def test_seeded_row_ignores_batch_composition(logits: torch.Tensor) -> None:
    steps = [torch.randn(5, V, generator=torch.Generator().manual_seed(s)) for s in range(50)]
    settings = {"temperature": 0.8, "top_p": 0.9, "min_p": 0.02}
    alone = row(seed=42, **settings)
    mixed = [row(temperature=1.0), row(seed=7, top_k=5), row(seed=42, **settings), row(temperature=0.0),
             row(temperature=1.3, presence_penalty=0.5)]
    tokens_alone, tokens_mixed = [], []
    for step in steps:
        # Row 2 of each step's logits is the seeded row's; the others sit around it.
        tokens_alone.append(sample(step[2:3], [alone]).token_ids.item())
        tokens_mixed.append(sample(step, mixed).token_ids[2].item())
    assert tokens_alone == tokens_mixed
    assert len(set(tokens_alone)) > 3  # it really sampled


def test_temperature_sampling_matches_softmax() -> None:
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0, 1.5, 0.2])
    n, temperature = 40_000, 0.7
    counts = draws(logits, n, temperature=temperature)
    expected = torch.softmax(logits / temperature, -1) * n
    chi2 = sum((counts[t] - expected[t].item()) ** 2 / expected[t].item() for t in range(8))
    assert chi2 < 30  # 7 degrees of freedom: p(chi2 > 30) is about 1e-4


def test_top_k_top_p_and_min_p_keep_the_right_support() -> None:
    probs = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    logits = probs.log()
    assert set(draws(logits, 4000, top_k=3)) == {0, 1, 2}
    assert set(draws(logits, 4000, top_p=0.75)) == {0, 1, 2}  # 0.4 + 0.25 < 0.75 <= 0.8
    assert set(draws(logits, 4000, min_p=0.2)) == {0, 1, 2, 3}  # keeps p >= 0.08
    assert set(draws(logits, 4000, top_k=4, top_p=0.9, min_p=0.3)) == {0, 1, 2}
    assert set(draws(logits, 4000, top_k=2, top_p=0.6)) == {0}  # top_p counts mass renormalised over top_k
    counts = draws(logits, 20_000, top_k=2)
    assert abs(counts[0] / 20_000 - 0.4 / 0.65) < 0.02


def reference_penalties(logits: torch.Tensor, r: SamplingRow) -> torch.Tensor:
    """Token by token, as HF (repetition) and OpenAI (presence/frequency) describe them."""
    out = logits.clone()
    p = r.params
    for t in set(r.prompt_token_ids) | set(r.output_token_ids):
        out[t] = out[t] / p.repetition_penalty if out[t] > 0 else out[t] * p.repetition_penalty
    for t, c in Counter(r.output_token_ids).items():
        out[t] -= c * p.frequency_penalty + p.presence_penalty
    return out


def test_penalties_match_a_reference(logits: torch.Tensor) -> None:
    rows = [
        row([1, 2, 2], [4, 4, 4, 5], repetition_penalty=1.3, logprobs=V, temperature=0.0),
        row([6], [], presence_penalty=1.5, frequency_penalty=0.7, logprobs=V, temperature=0.0),
        row([7, 8], [9, 1, 9, 0, 15], presence_penalty=-0.5, frequency_penalty=1.2, repetition_penalty=0.8,
            logprobs=V, temperature=0.0),
        row([7], [7, 7], logprobs=V, temperature=0.0),  # no penalties: untouched
        row([2, 3], [1, 1, 1, 2, 14], repetition_penalty=2.0, frequency_penalty=-2.0, logprobs=V),
        row([], [11, 12], frequency_penalty=2.0, logprobs=V, temperature=0.0),
    ]
    out = sample(logits, rows)
    for i, r in enumerate(rows):
        expected = torch.log_softmax(reference_penalties(logits[i], r), -1)
        got = torch.empty(V).scatter_(0, out.top_token_ids[i], out.top_logprobs[i])
        torch.testing.assert_close(got, expected)
        if r.params.greedy:
            assert out.token_ids[i] == expected.argmax()


def test_min_tokens_bans_eos_and_stop_ids_until_reached() -> None:
    logits = torch.zeros(4, V)
    logits[:, EOS], logits[:, 9], logits[:, 5] = 10.0, 9.0, 8.0
    rows = [
        row(output=[1], min_tokens=2, temperature=0.0, stop_token_ids=[9]),
        row(output=[1, 1], min_tokens=2, temperature=0.0),
        row(output=[], min_tokens=3, temperature=0.0),
        row(output=[], min_tokens=3, temperature=0.0, ignore_eos=True),
    ]
    assert sample(logits, rows).token_ids.tolist() == [5, EOS, 9, EOS]
    for _ in range(20):
        assert sample(logits[:1], [row(output=[1], min_tokens=2, stop_token_ids=[9])]).token_ids.item() not in (EOS, 9)


def test_logprobs_and_top_logprobs_are_log_softmax(logits: torch.Tensor) -> None:
    rows = [row(temperature=0.0, logprobs=0), row(temperature=0.0, logprobs=2), row(logprobs=5, temperature=0.5),
            row(temperature=0.0), row(logprobs=1, top_k=3), row(logprobs=3, temperature=0.0)]
    out = sample(logits, rows)
    expected = torch.log_softmax(logits, -1)
    torch.testing.assert_close(out.logprobs, expected.gather(1, out.token_ids[:, None]).squeeze(1))
    assert out.top_token_ids.shape == out.top_logprobs.shape == (6, 5)
    values, ids = expected.topk(5, dim=-1)
    assert torch.equal(out.top_token_ids, ids)
    torch.testing.assert_close(out.top_logprobs, values)
    # logprobs=0 alone: the chosen token's logprob, no top list.
    only = sample(logits, [row(temperature=0.0, logprobs=0)] * 6)
    assert only.top_token_ids is None and only.top_logprobs is None
    torch.testing.assert_close(only.logprobs, expected.max(-1).values)


def test_logits_processors_see_output_and_shape_the_choice(logits: torch.Tensor) -> None:
    seen: list[list[int]] = []

    def ban_best(output: list[int], row_logits: torch.Tensor) -> torch.Tensor:
        seen.append(list(output))
        return row_logits.masked_fill(row_logits == row_logits.max(), float("-inf"))

    def only_seven(output: list[int], row_logits: torch.Tensor) -> torch.Tensor:
        row_logits[:7] = float("-inf")
        row_logits[8:] = float("-inf")
        return row_logits

    rows = [row(output=[4, 2], temperature=0.0, logits_processors=[ban_best], logprobs=0),
            row(temperature=0.0), row(logits_processors=[only_seven], logprobs=0)]
    out = sample(logits[:3], rows)
    assert seen == [[4, 2]]
    assert out.token_ids[0] == logits[0].topk(2).indices[1]
    assert out.token_ids[1] == logits[1].argmax()
    assert out.token_ids[2] == 7 and out.logprobs[2] == 0.0


def test_logit_bias_is_added_before_penalties_and_logprobs(logits: torch.Tensor) -> None:
    worst = int(logits[0].argmin())
    rows = [row(temperature=0.0, logit_bias={worst: 100.0}, logprobs=0),
            row(temperature=0.0, logit_bias={int(logits[1].argmax()): -100.0}),
            row(temperature=0.0), row(temperature=1.0, logit_bias={5: 100.0}, seed=1),
            row(temperature=0.0, logit_bias={V + 7: 100.0}),  # past the logits (a padded vocabulary): ignored
            row(temperature=0.0, logit_bias={})]
    before = logits.clone()
    out = sample(logits, rows)
    torch.testing.assert_close(logits, before)  # the caller's logits are not touched
    biased = logits[0].clone()
    biased[worst] += 100.0
    assert out.token_ids[0] == worst
    torch.testing.assert_close(out.logprobs[0], torch.log_softmax(biased, -1)[worst])
    assert out.token_ids[1] == logits[1].topk(2).indices[1]
    assert out.token_ids[2] == logits[2].argmax() and out.token_ids[3] == 5
    assert out.token_ids[4] == logits[4].argmax() and out.token_ids[5] == logits[5].argmax()


@pytest.mark.parametrize("seed", [2**63, -(2**63) - 1])
def test_seeds_outside_int64_are_rejected(seed: int) -> None:
    with pytest.raises(ValueError, match="seed"):
        SamplingParams(seed=seed)


@pytest.mark.parametrize("field", ["temperature", "repetition_penalty"])
def test_infinite_temperature_or_penalty_is_rejected(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: float("inf")})
