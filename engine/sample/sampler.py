"""Sampler: one batched call per engine step turns last-token logits into next tokens (and logprobs).

Order per step: (1) per-request logits processors, (2) min_tokens bans eos/stop ids, (3) logit_bias,
repetition, presence and frequency penalties, (4) logprobs, (5) greedy argmax or temperature, top-k,
top-p, min-p and an exponential race. Every stage is skipped when no row in the batch needs it, so an
all-greedy batch is a single argmax.

A row with a `draft` token (speculative decoding) returns the draft when it is accepted: always when it is
the greedy token; for a random row with probability p(draft), else a draw from p with the draft removed
(rejection sampling against a one-hot proposal, which keeps p's distribution exactly).

Logprobs are log_softmax of the logits after (1)-(3) and before temperature and truncation: the
model's distribution with the request's bans and penalties, which is what a sampled token can be
judged against; for a greedy request without processors or penalties they equal
log_softmax(model logits) exactly. (vLLM's default "raw" mode would ignore bans and penalties; its
"processed" mode would add temperature and truncation.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from engine.core.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


@dataclass
class SamplingRow:
    """One sequence to sample for: its params, tokens so far, and its own RNG when seeded."""

    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    generator: torch.Generator | None = None  # owned by the engine; persists across steps
    # A drafted token to verify at this row (speculative decoding): kept with the probability the row's
    # distribution gives it, else replaced by a draw from that distribution without it (rejection sampling).
    draft: int | None = None


@dataclass
class SamplerOutput:
    """Sampled tokens per row with their logprobs; top_* are [N, K] for K = largest logprobs asked."""

    token_ids: torch.Tensor  # [N] long
    logprobs: torch.Tensor  # [N] float; NaN when no row in the batch asked for logprobs
    top_token_ids: torch.Tensor | None = None  # [N, K] long
    top_logprobs: torch.Tensor | None = None  # [N, K] float
    # Rows whose logits processor raised: their token is meaningless and the request must end.
    failed_rows: list[int] = field(default_factory=list)


def _counts(token_lists: list[list[int]], vocab_size: int, device: torch.device) -> torch.Tensor:
    """[len(token_lists), vocab_size] occurrence counts, from one padded scatter_add."""
    width = max((len(t) for t in token_lists), default=0)
    counts = torch.zeros(len(token_lists), vocab_size + 1, device=device)
    if width:
        # Padding goes to an extra column that is dropped afterwards.
        padded = torch.tensor([t + [vocab_size] * (width - len(t)) for t in token_lists], device=device)
        counts.scatter_add_(1, padded, torch.ones(padded.shape, device=device))
    return counts[:, :vocab_size]


def _plain_greedy(params: SamplingParams) -> bool:
    """True when a row's token is the argmax of the raw logits: greedy, nothing alters or reads them."""
    return (params.greedy and params.logprobs is None and not params.logits_processors and params.min_tokens == 0
            and params.repetition_penalty == 1.0 and params.presence_penalty == 0.0
            and params.frequency_penalty == 0.0 and not params.logit_bias)


def _greedy(logits: torch.Tensor) -> SamplerOutput:
    """The fast path of an all-plain-greedy batch: one argmax, no copy, no softmax."""
    token_ids = logits.argmax(dim=-1)
    return SamplerOutput(token_ids, torch.full(token_ids.shape, float("nan"), device=logits.device))


class Sampler:
    """Batched sampling over [N, V] float logits, one row per sequence."""

    def __init__(self, eos_token_ids: set[int]) -> None:
        self.eos_token_ids = sorted(eos_token_ids)

    def __call__(self, logits: torch.Tensor, rows: list[SamplingRow]) -> SamplerOutput:
        """Next token for each row; see the module docstring for the order of the stages."""
        if all(_plain_greedy(r.params) for r in rows):
            return _greedy(logits)
        failed: list[int] = []
        as_float = logits.float()
        # .float() of bf16/fp16 logits is already a private copy; fp32 logits are the caller's tensor
        logits = self._process(as_float, rows, failed, owned=as_float is not logits)
        top_k = max((r.params.logprobs for r in rows if r.params.logprobs is not None), default=None)
        logprobs = torch.log_softmax(logits, dim=-1) if top_k is not None else None
        token_ids = self._sample(logits, rows)
        if logprobs is None:
            nan = torch.full(token_ids.shape, float("nan"), device=logits.device)
            return SamplerOutput(token_ids, nan, failed_rows=failed)
        chosen = logprobs.gather(1, token_ids[:, None]).squeeze(1)
        if not top_k:
            return SamplerOutput(token_ids, chosen, failed_rows=failed)
        top_logprobs, top_token_ids = logprobs.topk(top_k, dim=-1)
        return SamplerOutput(token_ids, chosen, top_token_ids, top_logprobs, failed)

    def _process(self, logits: torch.Tensor, rows: list[SamplingRow], failed: list[int],
                 owned: bool) -> torch.Tensor:
        """Stages (1)-(3) on a private copy of the logits (`owned`: already one); the input when none applies."""
        custom = [i for i, r in enumerate(rows) if r.params.logits_processors]
        banned = [(i, t) for i, r in enumerate(rows) if len(r.output_token_ids) < r.params.min_tokens
                  for t in self._stop_ids(r.params)]
        penalized = [i for i, r in enumerate(rows) if r.params.repetition_penalty != 1.0
                     or r.params.presence_penalty != 0.0 or r.params.frequency_penalty != 0.0]
        biased = [(i, t, b) for i, r in enumerate(rows) for t, b in (r.params.logit_bias or {}).items()]
        if not (custom or banned or penalized or biased):
            return logits
        if not owned:
            logits = logits.clone()
        for i in custom:
            row = logits[i]
            try:
                for processor in rows[i].params.logits_processors:
                    row = processor(rows[i].output_token_ids, row)
            except Exception:  # one request's broken processor must not take the batch down
                logger.exception("logits processor failed; ending its request")
                failed.append(i)
                continue
            logits[i] = row
        vocab_size = logits.shape[1]
        banned = [(i, t) for i, t in banned if 0 <= t < vocab_size]
        if banned:
            index = torch.tensor(banned, device=logits.device)
            logits[index[:, 0], index[:, 1]] = float("-inf")
        biased = [(i, t, b) for i, t, b in biased if 0 <= t < vocab_size]
        if biased:
            index = torch.tensor([(i, t) for i, t, _ in biased], device=logits.device)
            bias = torch.tensor([b for _, _, b in biased], device=logits.device, dtype=logits.dtype)
            logits.index_put_((index[:, 0], index[:, 1]), bias, accumulate=True)
        if penalized:
            index = torch.tensor(penalized, device=logits.device)
            logits[index] = self._penalize(logits[index], [rows[i] for i in penalized])
        return logits

    def _stop_ids(self, params: SamplingParams) -> list[int]:
        """Tokens that would end the sequence; with ignore_eos, eos does not, so it stays allowed."""
        eos = [] if params.ignore_eos else self.eos_token_ids
        return [*eos, *params.stop_token_ids]

    @staticmethod
    def _penalize(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        """Repetition penalty over prompt + output (HF), presence/frequency over output (OpenAI)."""
        device, vocab_size = logits.device, logits.shape[1]
        output_counts = _counts([r.output_token_ids for r in rows], vocab_size, device)
        if any(r.params.repetition_penalty != 1.0 for r in rows):  # a host-side check: no device sync
            repetition = torch.tensor([r.params.repetition_penalty for r in rows], device=device)[:, None]
            seen = (_counts([r.prompt_token_ids for r in rows], vocab_size, device) > 0) | (output_counts > 0)
            scaled = torch.where(logits > 0, logits / repetition, logits * repetition)
            logits = torch.where(seen, scaled, logits)
        frequency = torch.tensor([r.params.frequency_penalty for r in rows], device=device)[:, None]
        presence = torch.tensor([r.params.presence_penalty for r in rows], device=device)[:, None]
        return logits - frequency * output_counts - presence * (output_counts > 0)

    def _sample(self, logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        """Argmax for greedy rows; temperature, top-k, top-p, min-p and an exponential race for the rest."""
        token_ids = logits.argmax(dim=-1)
        random_rows = [i for i, r in enumerate(rows) if not r.params.greedy]
        if not random_rows:
            return token_ids
        params = [rows[i].params for i in random_rows]
        device = logits.device
        index = torch.tensor(random_rows, device=device)
        temperature = torch.tensor([p.temperature for p in params], device=device)[:, None]
        scaled = logits[index] / temperature
        if any(p.top_k > 0 or p.top_p < 1.0 for p in params):
            scaled = self._top_k_top_p(scaled, params)
        probs = torch.softmax(scaled, dim=-1)
        if any(p.min_p > 0.0 for p in params):
            min_p = torch.tensor([p.min_p for p in params], device=device)[:, None]
            probs = probs.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), 0.0)
        drafted = [j for j, i in enumerate(random_rows) if rows[i].draft is not None]
        accepted = None
        if drafted:
            accepted = self._accept_drafts(probs, [rows[random_rows[j]] for j in drafted], drafted)
        # argmax(p / q) with q ~ Exp(1) draws from p (unnormalised is fine). Unseeded rows share one
        # draw; a seeded row's noise comes from its own generator, so its tokens do not depend on
        # what else is in the batch.
        noise = torch.empty_like(probs).exponential_()
        for j, i in enumerate(random_rows):
            if rows[i].generator is not None:
                noise[j].exponential_(generator=rows[i].generator)
        # exponential_ can return 0, and 0 / 0 would be NaN, which argmax prefers to everything.
        noise.clamp_min_(torch.finfo(noise.dtype).tiny)
        sampled = (probs / noise).argmax(dim=-1)
        if accepted is not None:
            keep, drafts = accepted
            sampled[keep] = drafts[keep]
        token_ids[index] = sampled
        return token_ids

    @staticmethod
    def _accept_drafts(probs: torch.Tensor, rows: list[SamplingRow],
                       drafted: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Accept each drafted row's token with its probability; the rest lose the draft from `probs` (in
        place), so the draw that follows samples the residual distribution. Returns (accepted mask over
        probs' rows, the draft of each row, -1 elsewhere)."""
        device = probs.device
        index = torch.tensor(drafted, device=device)
        drafts = torch.tensor([r.draft for r in rows], device=device)
        chosen = probs[index].gather(1, drafts[:, None])[:, 0] / probs[index].sum(dim=-1)
        uniform = torch.rand(len(rows), device=device)
        for j, r in enumerate(rows):
            if r.generator is not None:
                uniform[j] = torch.rand(1, device=device, generator=r.generator)[0]
        keep = torch.zeros(len(probs), dtype=torch.bool, device=device)
        probs[index, drafts] = 0.0
        # a draft holding all the mass (rounding aside) leaves nothing to draw instead: it stays
        keep[index] = (uniform < chosen) | (probs[index].sum(dim=-1) == 0)
        all_drafts = torch.full((len(probs),), -1, dtype=torch.long, device=device)
        all_drafts[index] = drafts
        return keep, all_drafts

    @staticmethod
    def _top_k_top_p(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
        """Keep each row's top_k tokens, then the fewest whose mass reaches top_p; mask the rest.

        Both keep a prefix of the row sorted by logit, so one (partial) sort finds each row's last
        kept logit and everything below it is masked; tokens tied with that logit stay.
        """
        device, vocab_size = logits.device, logits.shape[1]
        top_k = [p.top_k if 0 < p.top_k < vocab_size else vocab_size for p in params]
        keep = torch.tensor(top_k, device=device)[:, None]
        if all(p.top_p >= 1.0 for p in params):
            ordered = logits.topk(max(top_k), dim=-1).values  # far cheaper than a full sort on CPU
        else:
            ordered = logits.sort(dim=-1, descending=True).values
            positions = torch.arange(vocab_size, device=device)[None, :]
            probs = torch.softmax(ordered.masked_fill(positions >= keep, float("-inf")), dim=-1)
            # A token stays while the tokens before it hold less than top_p (the first always does);
            # top_p = 1 becomes inf so rounding in the cumsum never cuts the tail.
            mass_before = probs.cumsum(dim=-1) - probs
            top_p = torch.tensor([p.top_p if p.top_p < 1.0 else float("inf") for p in params], device=device)
            kept_by_p = (mass_before < top_p[:, None]).sum(dim=-1, keepdim=True)
            # clamp: a row of all -inf (everything banned) has NaN mass and would keep nothing.
            keep = torch.minimum(keep, kept_by_p.clamp_min(1))
        threshold = ordered.gather(1, keep - 1)
        return logits.masked_fill(logits < threshold, float("-inf"))
