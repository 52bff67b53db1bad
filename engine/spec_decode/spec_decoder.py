"""SpecDecoder: drafts before each schedule, verification rows for the sampler, and what the sampler accepts.

A step verifies a sequence's k drafted tokens by computing its last token and the k drafts in one chunk:
the logits of those k + 1 positions become k + 1 sampler rows, row i carrying draft i. The sampler keeps a
draft when it is what the target would produce (greedy), or by rejection sampling (random); the first row
whose token differs from its draft ends the run, and its token, or the bonus row's after k acceptances, is
the target's own. So a step yields 1 + accepted tokens, and the blocks of the rejected ones go back.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch

from engine.core.sequence import Sequence
from engine.kv.kv_cache import KVCacheManager
from engine.sample.sampler import SamplerOutput, SamplingRow
from engine.spec_decode.config import SpeculativeConfig
from engine.spec_decode.metrics import SpecDecodeMetrics
from engine.spec_decode.proposer import Proposer

logger = logging.getLogger(__name__)


class SpecDecoder:
    """Speculative decoding inside the engine's step: propose, expand rows, accept (see the module docstring)."""

    def __init__(self, config: SpeculativeConfig, proposer: Proposer, device: torch.device, max_model_len: int,
                 vocab_size: int) -> None:
        self.config = config
        self.proposer = proposer
        self.batch_limit = config.batch_limit(device.type)
        self.max_model_len = max_model_len
        self.metrics = SpecDecodeMetrics(config.num_speculative_tokens)
        self._scratch = torch.zeros(vocab_size, device=device)  # a row to ask logits processors what they allow

    def propose(self, running: list[Sequence]) -> None:
        """Set spec_token_ids on each running decode (none from batch_limit running sequences on)."""
        for seq in running:
            seq.spec_token_ids = []
        if len(running) >= self.batch_limit:
            return
        k = self.config.num_speculative_tokens
        seqs, budgets = [], []
        for seq in running:
            # a decode whose samples have forked; room for the drafts and the token the target adds
            room = min(k, (seq.params.max_tokens or 0) - seq.num_output_tokens - 1,
                       self.max_model_len - seq.num_tokens - 1)
            if seq.num_computed_tokens == seq.num_tokens - 1 and seq.num_output_tokens > 0 and room > 0:
                seqs.append(seq)
                budgets.append(room)
        if not seqs:
            return
        for seq, draft in zip(seqs, self.proposer.propose(seqs, budgets), strict=True):
            seq.spec_token_ids = draft[: self._allowed_prefix(seq, draft)]

    def release(self, running: list[Sequence]) -> None:
        """Let the proposer drop what it keeps for sequences that no longer run (a draft model's blocks)."""
        self.proposer.release({seq.seq_id for seq in running})

    def _allowed_prefix(self, seq: Sequence, draft: list[int]) -> int:
        """How many leading drafts the sequence's logits processors (grammar, thinking budget) allow: a draft
        they would mask is never verified, and drafting stops there."""
        processors = seq.params.logits_processors
        if not processors or not draft:
            return len(draft)
        seen = seq.output_token_ids  # a copy, grown by each draft the processors allow
        try:
            for i, token in enumerate(draft):
                row = self._scratch.zero_()
                for processor in processors:
                    row = processor(seen, row)
                if row[token] == float("-inf"):
                    return i
                seen.append(token)
        except Exception:  # the sampler meets the same error and ends the request; here: no drafts
            logger.debug("logits processor failed on a draft", exc_info=True)
            return 0
        return len(draft)

    @staticmethod
    def expand(seq: Sequence, row: SamplingRow) -> list[SamplingRow]:
        """The k + 1 verification rows of a drafted sequence: row i sees the output with drafts [0, i)."""
        draft = seq.spec_token_ids
        wants_output = bool(row.output_token_ids) or row.params.min_tokens > 0  # copied only when something reads it
        return [replace(row, output_token_ids=[*row.output_token_ids, *draft[:i]] if wants_output else [],
                        draft=draft[i] if i < len(draft) else None) for i in range(len(draft) + 1)]

    def accept(self, seqs: list[Sequence], sampled: SamplerOutput,
               kv: KVCacheManager) -> tuple[list[Sequence], SamplerOutput]:
        """Keep each drafted sequence's rows up to its first rejection; advance it by the tokens that holds,
        give back the rejected tokens' blocks. Returns the rows for the output processor, one per new token."""
        token_ids = sampled.token_ids.tolist()
        failed = set(sampled.failed_rows)
        keep: list[int] = []
        i = 0
        while i < len(seqs):
            seq = seqs[i]
            draft = seq.spec_token_ids
            if not draft:
                keep.append(i)
                i += 1
                continue
            accepted = 0
            while accepted < len(draft) and i + accepted not in failed and token_ids[i + accepted] == draft[accepted]:
                accepted += 1
            keep.extend(range(i, i + accepted + 1))
            self.metrics.observe(len(draft), accepted)
            before = seq.num_computed_tokens
            seq.num_computed_tokens += 1 + accepted
            kv.trim(seq.block_tables, seq.num_computed_tokens)
            if seq.num_computed_tokens // kv.block_size > before // kv.block_size:  # a block filled up
                kv.cache_blocks(seq.block_tables, [*seq.token_ids, *draft[:accepted]], seq.block_hashes,
                                seq.num_computed_tokens)
            seq.spec_token_ids = []
            i += len(draft) + 1
        if len(keep) == len(seqs):
            return seqs, sampled
        index = torch.tensor(keep, device=sampled.token_ids.device)
        remap = {row: j for j, row in enumerate(keep)}
        kept = SamplerOutput(
            sampled.token_ids[index], sampled.logprobs[index],
            None if sampled.top_token_ids is None else sampled.top_token_ids[index],
            None if sampled.top_logprobs is None else sampled.top_logprobs[index],
            [remap[row] for row in sampled.failed_rows if row in remap])
        return [seqs[row] for row in keep], kept
