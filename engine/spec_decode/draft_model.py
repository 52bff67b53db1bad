"""Draft-model drafting: a smaller model of the same vocabulary, with its own KV cache, proposes greedily.

Each target sequence has a draft twin holding the tokens the draft model has seen. Before drafting, the twin
is brought to the target's tokens: it steps back to where they part (the first rejected draft), its blocks
past that point go back, and the tokens it has not computed yet (the whole prompt the first time) run in
chunks; then k - 1 decode steps draft the rest. Greedy drafts are a one-hot proposal, so the target's
rejection sampling stays exact.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace

import torch

from engine.attention.selector import make_attention_backend
from engine.config import EngineConfig, ModelConfig
from engine.core.scheduler import ScheduledBatch
from engine.core.sequence import Sequence
from engine.errors import ModelLoadError
from engine.kv.kv_cache import BlockTable
from engine.kv.sizing import make_kv_manager
from engine.model.loader import load_config, resolve_model
from engine.model.transformer import HybridTransformer
from engine.runner.model_runner import ModelRunner
from engine.spec_decode.proposer import Proposer


@dataclass
class DraftSequence:
    """The draft model's view of one target sequence: the tokens it holds and how many have K/V."""

    token_ids: list[int]
    num_computed_tokens: int = 0
    block_tables: dict[str, BlockTable] = field(default_factory=dict)
    alive: bool = True  # False once the draft cache could not hold it: no more drafts this step

    def step_token_ids(self, start: int, num: int) -> list[int]:
        """The ids of the num tokens a step computes from position start (ModelRunner.prepare's interface)."""
        return self.token_ids[start : start + num]


class DraftModelProposer(Proposer):
    """Runs a draft model beside the target (on the target's first rank) and drafts greedily with it."""

    def __init__(self, model: str, target: ModelConfig, cfg: EngineConfig, kv_cache_memory: int | None,
                 dtype: torch.dtype, device: torch.device, progress: bool = False) -> None:
        path = resolve_model(model)
        self.model_config = mcfg = ModelConfig.from_hf(load_config(path))
        if mcfg.vocab_size != target.vocab_size:
            raise ModelLoadError(f"the draft model {model!r} has a vocabulary of {mcfg.vocab_size} tokens and the "
                                 f"target {target.vocab_size}: a draft must share the target's tokenizer")
        self.max_len = min(cfg.max_model_len or mcfg.max_position_embeddings, mcfg.max_position_embeddings)
        self.cfg = replace(cfg, tensor_parallel_size=1, compile=False, enable_prefix_caching=False,
                           speculative_config=None, max_model_len=self.max_len,
                           kv_cache_memory=kv_cache_memory if kv_cache_memory is not None else cfg.kv_cache_memory)
        with device:
            backend = make_attention_backend(cfg.attention_backend, device, mcfg.num_heads, mcfg.head_dim,
                                             self.cfg.max_running_seqs)
        self.model = HybridTransformer.from_checkpoint(path, mcfg, backend, dtype, device, self.max_len, progress)
        self.kv = make_kv_manager(mcfg, self.cfg, dtype, device)
        self.runner = ModelRunner(self.model, self.kv, dtype, device, self.cfg)
        self._twins: dict[int, DraftSequence] = {}

    def release(self, live: Collection[int]) -> None:
        """Free the draft blocks of sequences that no longer run."""
        for seq_id in [i for i in self._twins if i not in live]:
            self.kv.free(self._twins.pop(seq_id).block_tables)

    @torch.inference_mode()
    def propose(self, seqs: list[Sequence], num_tokens: list[int]) -> list[list[int]]:
        """Catch each twin up with its sequence, then draft up to num_tokens[i] tokens greedily."""
        drafts: list[list[int]] = [[] for _ in seqs]
        twins = {i: self._sync(seq) for i, seq in enumerate(seqs)
                 if num_tokens[i] > 0 and seq.num_tokens + num_tokens[i] <= self.max_len}
        pending = dict(twins)  # twins still computing the target's own tokens
        while pending:
            rows = self._step(pending, lambda twin: len(twin.token_ids) - twin.num_computed_tokens)
            for i, token in rows.items():
                drafts[i].append(token)
            pending = {i: t for i, t in pending.items() if t.alive and t.num_computed_tokens < len(t.token_ids)}
        for _ in range(max(num_tokens, default=1) - 1):
            active = {i: t for i, t in twins.items() if t.alive and 0 < len(drafts[i]) < num_tokens[i]}
            if not active:
                break
            for i, twin in active.items():
                twin.token_ids.append(drafts[i][-1])
            for i, token in self._step(active, lambda twin: 1).items():
                drafts[i].append(token)
        return drafts

    def _sync(self, seq: Sequence) -> DraftSequence:
        """The sequence's twin, stepped back to where its tokens and the sequence's part."""
        twin = self._twins.get(seq.seq_id)
        if twin is None or not twin.alive:
            twin = self._twins[seq.seq_id] = DraftSequence(list(seq.token_ids))
            return twin
        common = min(twin.num_computed_tokens, seq.num_tokens - 1)  # the last token is always computed anew
        for j in range(max(0, common - 64), common):  # drafts differ only near the end
            if twin.token_ids[j] != seq.token_ids[j]:
                common = j
                break
        twin.num_computed_tokens = common
        twin.token_ids = list(seq.token_ids)
        self.kv.trim(twin.block_tables, common)
        return twin

    def _step(self, twins: dict[int, DraftSequence], want: Callable[[DraftSequence], int]) -> dict[int, int]:
        """One draft-model step over the twins (chunks under the token budget); the greedy next token of each
        twin whose chunk reaches its last token. A twin the draft cache cannot hold stops drafting."""
        budget = self.cfg.max_num_batched_tokens
        batch, keys, sample_rows = ScheduledBatch(), [], []
        for i, twin in twins.items():
            num_new = min(want(twin), budget)
            if num_new <= 0:
                continue
            if not self.kv.allocate(twin.block_tables, twin.num_computed_tokens, num_new):
                self.kv.free(twin.block_tables)
                twin.alive = False  # rebuilt from scratch next time
                continue
            if twin.num_computed_tokens + num_new == len(twin.token_ids):
                sample_rows.append(len(batch))
            batch.seqs.append(twin)
            batch.num_new_tokens.append(num_new)
            keys.append(i)
            budget -= num_new
            if budget == 0:
                break
        if not batch.seqs:
            return {}
        order = sorted(range(len(batch)), key=lambda r: batch.num_new_tokens[r] != 1)  # decodes first
        batch = ScheduledBatch([batch.seqs[r] for r in order], [batch.num_new_tokens[r] for r in order])
        rank = {r: j for j, r in enumerate(order)}
        sampled = sorted(rank[r] for r in sample_rows)
        logits, _ = self.runner.execute(batch, sampled)
        for twin, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
            twin.num_computed_tokens += n
        tokens = logits.argmax(dim=-1).tolist()
        return {keys[order[r]]: token for r, token in zip(sampled, tokens, strict=True)}
