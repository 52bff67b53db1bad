"""OutputProcessor: sampled tokens -> stop checks, text and per-request deltas; n > 1 forks; prompt logprobs."""

from __future__ import annotations

import logging
from collections import defaultdict

import torch

from engine.config import EngineConfig
from engine.core.outputs import CompletionOutput, RequestMetrics, RequestOutput, TokenLogprob
from engine.core.scheduler import Scheduler
from engine.core.sequence import Sequence, SequenceStatus
from engine.kv.kv_cache import KVCacheManager
from engine.runner.model_runner import ModelRunner
from engine.sample.sampler import SamplerOutput

logger = logging.getLogger(__name__)


def add_prompt_logprobs(seq: Sequence, chunk_logits: torch.Tensor) -> None:
    """Logprobs of the prompt tokens this chunk predicts (position j predicts token j + 1)."""
    start = seq.num_computed_tokens
    # After a preemption the chunk is recomputed: skip what is already recorded.
    first = len(seq.prompt_logprobs) - 1 - start
    targets = seq.token_ids[start + 1 + first : min(start + len(chunk_logits), seq.num_prompt_tokens - 1) + 1]
    if first < 0 or not targets:
        return
    logprobs = torch.log_softmax(chunk_logits[first : first + len(targets)], dim=-1)
    chosen = logprobs.gather(1, torch.tensor(targets, device=logprobs.device)[:, None])[:, 0].tolist()
    k = seq.params.prompt_logprobs
    top_lps, top_ids = logprobs.topk(k, dim=-1) if k else (None, None)
    for i, token in enumerate(targets):
        top = list(zip(top_ids[i].tolist(), top_lps[i].tolist(), strict=True)) if k else []
        seq.prompt_logprobs.append(TokenLogprob(token, chosen[i], top))


def _add_delta(outs: list[CompletionOutput], delta: CompletionOutput) -> None:
    """Add a sample's delta; consecutive ones of one sample (accepted drafts) become one."""
    if outs and outs[-1].index == delta.index:
        outs[-1].extend(delta)
    else:
        outs.append(delta)


class OutputProcessor:
    """Appends each step's sampled tokens to their sequences and builds what changed for each request.

    `requests` and `prompts` are the engine's request table: the engine adds and aborts requests, this
    drops each one once all its samples have finished.
    """

    def __init__(self, config: EngineConfig, scheduler: Scheduler, kv: KVCacheManager, runner: ModelRunner,
                 eos_token_ids: set[int], requests: dict[str, list[Sequence]],
                 prompts: dict[str, list[int]]) -> None:
        self.config, self.scheduler, self.kv, self.runner = config, scheduler, kv, runner
        self.eos_token_ids = eos_token_ids
        self.requests, self.prompts = requests, prompts

    def fork_children(self, parent: Sequence) -> list[Sequence]:
        """Once sample 1's prompt is in the cache, samples 2..n share its blocks and start decoding."""
        if not parent.children or parent.num_output_tokens > 0:
            return []
        children, parent.children = parent.children, []
        forked = []
        for child in children:
            if child.is_finished:
                continue
            if not self.kv.can_fork(parent.block_tables, parent.num_computed_tokens):
                self.scheduler.add(child)  # no room to copy: it prefills on its own later
                continue
            child.block_tables, copies = self.kv.fork(parent.block_tables, parent.num_computed_tokens)
            child.block_hashes = list(parent.block_hashes)
            child.num_cached_tokens = parent.num_cached_tokens
            self.runner.copy_blocks(copies)
            child.num_computed_tokens = parent.num_computed_tokens
            child.status = SequenceStatus.RUNNING
            self.scheduler.running.append(child)
            forked.append(child)
        return forked

    def process(self, seqs: list[Sequence], sampled: SamplerOutput) -> list[RequestOutput]:
        """Append sampled tokens, detokenize, apply stop conditions, and build per-request deltas."""
        token_ids = sampled.token_ids.tolist()
        logprobs = sampled.logprobs.tolist()
        top_ids = sampled.top_token_ids.tolist() if sampled.top_token_ids is not None else None
        top_lps = sampled.top_logprobs.tolist() if sampled.top_logprobs is not None else None
        deltas: dict[str, list[CompletionOutput]] = defaultdict(list)
        failed = set(sampled.failed_rows)
        for i, seq in enumerate(seqs):
            if seq.is_finished:  # a verified draft run that a stop condition ended early: the rest is dropped
                continue
            if i not in failed:  # failed: its logits processor raised
                try:
                    lp = None
                    if seq.params.logprobs is not None:
                        k = seq.params.logprobs
                        top = list(zip(top_ids[i][:k], top_lps[i][:k], strict=True)) if k and top_ids else []
                        lp = [TokenLogprob(token_ids[i], logprobs[i], top)]
                    _add_delta(deltas[seq.request_id], self._append_token(seq, token_ids[i], lp))
                    continue
                except Exception:
                    logger.exception("request %s failed on its new token; ending it", seq.request_id)
            # end this request only, with what it had
            seq.finish_reason = "abort"
            self.scheduler.finish(seq)
            _add_delta(deltas[seq.request_id], CompletionOutput(seq.index, "", [], None, "abort"))
        return self._request_outputs(deltas)

    def _append_token(self, seq: Sequence, token: int, lp: list[TokenLogprob] | None) -> CompletionOutput:
        """Append one sampled token: detokenize, apply stop conditions; the sample's delta."""
        seq.token_ids.append(token)
        ended_by_token = self._ends_on_token(seq, token)
        # The eos / stop token itself is not text of the answer (as in vLLM).
        text = "" if ended_by_token else seq.detokenizer.update([token])
        self._check_stop(seq, token, ended_by_token)
        if seq.is_finished and not seq.detokenizer.finished:
            text += seq.detokenizer.flush()
        return CompletionOutput(seq.index, text, [token], lp, seq.finish_reason, seq.stop_reason)

    def _ends_on_token(self, seq: Sequence, token: int) -> bool:
        """True when `token` is an eos or stop token that ends this sequence."""
        params = seq.params
        if seq.num_output_tokens < params.min_tokens:
            return False
        return token in params.stop_token_ids or (not params.ignore_eos and token in self.eos_token_ids)

    def _check_stop(self, seq: Sequence, token: int, ended_by_token: bool) -> None:
        """Finish the sequence if a stop condition holds after appending `token`."""
        params = seq.params
        reason: str | None = None
        if ended_by_token:
            reason = "stop"
            seq.stop_reason = token if token in params.stop_token_ids else None
        elif seq.detokenizer.finished:
            reason, seq.stop_reason = "stop", seq.detokenizer.stop_reason
        elif seq.num_output_tokens >= (params.max_tokens or 0) or seq.num_tokens >= self.config.max_model_len:
            reason = "length"
        if reason is not None:
            seq.finish_reason = reason
            self.scheduler.finish(seq)

    def _request_outputs(self, deltas: dict[str, list[CompletionOutput]]) -> list[RequestOutput]:
        outputs = []
        for request_id, outs in deltas.items():
            seqs = self.requests[request_id]
            finished = all(s.is_finished for s in seqs)
            first = seqs[0]
            metrics = RequestMetrics(first.arrival_time, first.first_scheduled_time)
            prompt_logprobs = None
            if first.params.prompt_logprobs is not None and first.num_output_tokens == 1 and outs[0].index == 0:
                prompt_logprobs = first.prompt_logprobs
            outputs.append(RequestOutput(request_id, self.prompts[request_id], outs, finished, metrics,
                                         prompt_logprobs, first.num_cached_tokens or 0))
            if finished:
                del self.requests[request_id], self.prompts[request_id]
        return outputs
