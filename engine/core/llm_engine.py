"""LLMEngine: the step loop that ties scheduler, model runner, sampler and detokenizer together."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from dataclasses import replace

import torch

from engine.attention.selector import make_attention_backend
from engine.config import EngineConfig, ModelConfig, resolve_device, resolve_dtype
from engine.core.output_processor import OutputProcessor, add_prompt_logprobs
from engine.core.outputs import RequestOutput
from engine.core.sampling_params import SamplingParams
from engine.core.scheduler import ScheduledBatch, Scheduler
from engine.core.sequence import Sequence
from engine.cpu_features import log_cpu_paths
from engine.errors import RequestRejected
from engine.kv.kv_cache import steady_blocks_per_seq
from engine.kv.sizing import fit_max_model_len, make_kv_manager, pool_specs
from engine.model.loader import load_config, resolve_model, tokenizer_path
from engine.model.transformer import HybridTransformer
from engine.parallel.executor import TensorParallelExecutor
from engine.parallel.sizes import validate_tensor_parallel
from engine.parallel.worker import WorkerSpec, log_rank_memory
from engine.runner.model_runner import ModelRunner
from engine.sample.sampler import Sampler, SamplingRow
from engine.spec_decode.setup import make_spec_decoder
from engine.spec_decode.spec_decoder import SpecDecoder
from engine.text.detokenizer import IncrementalDetokenizer
from engine.text.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


class LLMEngine:
    """Loads a model and serves many requests at once, one scheduler step per `step()` call."""

    def __init__(self, model: str | None = None, device: str = "cpu", dtype: str | torch.dtype | None = None,
                 config: EngineConfig | None = None, progress: bool = True) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        path = resolve_model(model)
        self.model_path = path
        self.model_config = ModelConfig.from_hf(load_config(path))
        self.tokenizer = Tokenizer(tokenizer_path(path))
        self.config = cfg = config or EngineConfig()
        cfg.fill_device_defaults(self.device)
        mcfg = self.model_config
        cfg.max_model_len = min(cfg.max_model_len or mcfg.max_position_embeddings, mcfg.max_position_embeddings)
        cfg.max_num_batched_tokens = max(cfg.max_num_batched_tokens, 1)
        self.eos_token_ids = set(self.tokenizer.eos_token_ids) | set(mcfg.eos_token_ids)

        validate_tensor_parallel(mcfg, cfg.tensor_parallel_size)
        with self.device:
            backend = make_attention_backend(cfg.attention_backend, self.device, mcfg.num_heads, mcfg.head_dim,
                                             cfg.max_running_seqs)
        self.executor: TensorParallelExecutor | None = None
        if cfg.tensor_parallel_size > 1:
            threads = max(1, (os.cpu_count() or 1) // cfg.tensor_parallel_size)
            spec = WorkerSpec(path, mcfg, cfg, self.dtype, str(self.device), pool_specs(mcfg), threads,
                              logging.getLogger().getEffectiveLevel())
            self.executor = TensorParallelExecutor(cfg.tensor_parallel_size, spec, self.device)
        try:
            self.model = HybridTransformer.from_checkpoint(path, mcfg, backend, self.dtype, self.device,
                                                           cfg.max_model_len, progress, cfg.quantization)
            self.kv = make_kv_manager(mcfg, cfg, self.dtype, self.device)
            fit_max_model_len(cfg, self.kv)
            self.runner = ModelRunner(self.model, self.kv, self.dtype, self.device, cfg)
            if self.executor is not None:
                self.executor.start(self.runner)
        except BaseException:
            self.shutdown()
            raise
        if self.device.type == "cpu":
            log_cpu_paths(self.dtype, cfg.prepack_weights)
        log_rank_memory(0, cfg.tensor_parallel_size, self.device, self.model, self.runner)
        self.scheduler = Scheduler(cfg, self.kv)
        self.sampler = Sampler(self.eos_token_ids)
        self.requests: dict[str, list[Sequence]] = {}
        self.prompts: dict[str, list[int]] = {}
        self.output_processor = OutputProcessor(cfg, self.scheduler, self.kv, self.runner, self.eos_token_ids,
                                                self.requests, self.prompts)
        self._seq_ids = itertools.count()
        self.num_prompt_tokens_computed = 0  # prefill work done, recomputation included
        self.spec_decoder: SpecDecoder | None = None
        if cfg.speculative_config is not None:
            self.spec_decoder = make_spec_decoder(cfg.speculative_config, mcfg, cfg, self.dtype, self.device, progress)

    # ---- requests -------------------------------------------------------------------------

    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams) -> list[int]:
        """Queue a request; returns its prompt token ids. Raises RequestRejected if it can never run."""
        if request_id in self.requests:
            raise RequestRejected(f"request id {request_id!r} is already in use")
        prompt_ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        self.validate(prompt_ids, params)
        max_len = self.config.max_model_len
        if params.max_tokens is None:
            params.max_tokens = max_len - len(prompt_ids)
        seqs = []
        try:  # whatever a request builds here (processors, generators) fails that request alone
            for index in range(params.n):
                sample_params = params
                if params.logits_processor_factories:
                    sample_params = replace(params, logits_processors=[
                        *params.logits_processors, *(make() for make in params.logits_processor_factories)])
                generator = None
                if params.seed is not None:
                    generator = torch.Generator(device=self.device).manual_seed((params.seed + index) % 2**64)
                seqs.append(Sequence(
                    seq_id=next(self._seq_ids), request_id=request_id, index=index, token_ids=list(prompt_ids),
                    num_prompt_tokens=len(prompt_ids), params=sample_params, generator=generator,
                    detokenizer=IncrementalDetokenizer(self.tokenizer, prompt_ids, sample_params),
                ))
        except Exception as e:
            logger.exception("request %s could not be set up", request_id)
            raise RequestRejected(f"the request could not be set up: {e}") from e
        parent = seqs[0]
        parent.children = seqs[1:]
        self.requests[request_id] = seqs
        self.prompts[request_id] = prompt_ids
        self.scheduler.add(parent)
        return prompt_ids

    def validate(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """Reject what can never fit, naming the numbers; reads only fixed sizes, so any thread may call it."""
        n, max_len = len(prompt_ids), self.config.max_model_len
        if n == 0:
            raise RequestRejected("the prompt is empty")
        vocab = self.model_config.vocab_size
        for name, ids in (("prompt", prompt_ids), ("stop_token_ids", params.stop_token_ids),
                          ("logit_bias", params.logit_bias or ())):
            if any(not 0 <= t < vocab for t in ids):
                raise RequestRejected(f"{name} token ids must be in [0, {vocab})", name)
        if params.max_tokens is None and n >= max_len:
            raise RequestRejected(f"the prompt has {n} tokens; this model's max_model_len is {max_len}")
        total = n + (params.max_tokens or 1)
        if total > max_len:
            raise RequestRejected(
                f"the prompt ({n} tokens) plus max_tokens ({params.max_tokens}) is {total} tokens, "
                f"more than max_model_len ({max_len})"
            )
        chunk = min(self.config.max_num_batched_tokens, total)
        for kind, spec in self.kv.specs.items():
            need = steady_blocks_per_seq(spec, total, self.kv.block_size, chunk) * params.n
            if need > self.kv.pools[kind].num_blocks:
                raise RequestRejected(
                    f"the request needs {need} KV blocks in the {kind} pool, which has "
                    f"{self.kv.pools[kind].num_blocks}; raise kv_cache_memory or shorten it"
                )

    def abort(self, request_id: str) -> None:
        """Stop a request now and free its blocks."""
        self.prompts.pop(request_id, None)
        for seq in self.requests.pop(request_id, []):
            if not seq.is_finished:
                seq.finish_reason = "abort"
                self.scheduler.finish(seq)
        if self.spec_decoder is not None:
            self.spec_decoder.release(self.scheduler.running)

    def has_unfinished(self) -> bool:
        """True while any request is queued or running."""
        return bool(self.requests)

    # ---- the step ---------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Draft, schedule, run the model once, sample (verifying drafts), and return what changed per request."""
        if self.spec_decoder is not None:
            self.spec_decoder.propose(self.scheduler.running)
        batch = self.scheduler.schedule()
        if not batch.seqs:
            return []
        order = sorted(range(len(batch)), key=lambda i: batch.num_new_tokens[i] != 1)
        batch = ScheduledBatch([batch.seqs[i] for i in order], [batch.num_new_tokens[i] for i in order])
        sample_rows = [i for i, (s, n) in enumerate(zip(batch.seqs, batch.num_new_tokens, strict=True))
                       if s.num_computed_tokens + n == s.num_tokens + len(s.spec_token_ids)]
        spec_rows = [i for i in sample_rows if batch.seqs[i].spec_token_ids]
        full_rows = [i for i, s in enumerate(batch.seqs)
                     if s.params.prompt_logprobs is not None and len(s.prompt_logprobs) < s.num_prompt_tokens]
        with self.executor.guard() if self.executor is not None else contextlib.nullcontext():
            logits, full_logits = self.runner.execute(batch, sample_rows, full_rows, spec_rows)
        for row, chunk_logits in full_logits.items():
            add_prompt_logprobs(batch.seqs[row], chunk_logits)
        for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
            if seq.spec_token_ids:
                continue  # advanced by what verification accepts
            self.num_prompt_tokens_computed += max(0, min(n, seq.num_prompt_tokens - seq.num_computed_tokens))
            seq.num_computed_tokens += n
            self.kv.cache_blocks(seq.block_tables, seq.token_ids, seq.block_hashes, seq.num_computed_tokens)
        samplers: list[Sequence] = []
        rows: list[SamplingRow] = []
        logit_rows: list[int] = []  # forks share their parent's logits row; each verified draft has its own
        for i in sample_rows:
            seq, first = batch.seqs[i], (logit_rows[-1] + 1 if logit_rows else 0)
            if seq.spec_token_ids:
                verify = SpecDecoder.expand(seq, self._sampling_row(seq))
                samplers.extend([seq] * len(verify))
                rows.extend(verify)
                logit_rows.extend(range(first, first + len(verify)))
                continue
            forks = [seq, *self.output_processor.fork_children(seq)]
            samplers.extend(forks)
            rows.extend(self._sampling_row(s) for s in forks)
            logit_rows.extend([first] * len(forks))
        if len(logit_rows) != len(logits):
            logits = logits[logit_rows]
        sampled = self.sampler(logits, rows)
        if spec_rows:
            samplers, sampled = self.spec_decoder.accept(samplers, sampled, self.kv)
        outputs = self.output_processor.process(samplers, sampled)
        if self.spec_decoder is not None:
            self.spec_decoder.release(self.scheduler.running)
        return outputs

    @staticmethod
    def _sampling_row(seq: Sequence) -> SamplingRow:
        """The sampler's view of a sequence; token lists are copied only when something reads them."""
        p = seq.params
        penalties = p.presence_penalty != 0.0 or p.frequency_penalty != 0.0
        wants_output = penalties or p.repetition_penalty != 1.0 or bool(p.logits_processors) or p.min_tokens > 0
        prompt = seq.token_ids[: seq.num_prompt_tokens] if p.repetition_penalty != 1.0 else []
        return SamplingRow(p, prompt, seq.output_token_ids if wants_output else [], seq.generator)

    def shutdown(self) -> None:
        """Stop tensor-parallel workers, if any (idempotent; a later step raises)."""
        if self.executor is not None:
            self.executor.shutdown()
            self.executor.failure = self.executor.failure or "the engine was shut down"

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix (requests in flight keep their blocks)."""
        self.kv.reset_prefix_cache()

    def stats(self) -> dict:
        """Running/waiting counts, KV blocks in use and cached per pool, preemptions and prefix-cache hits so far."""
        s = self.scheduler
        return {
            "running": len(s.running),
            "waiting": len(s.waiting),
            "kv_blocks_used": self.kv.usage(),
            "kv_blocks_cached": self.kv.num_cached(),
            "kv_blocks_total": self.kv.num_blocks(),
            "block_size": self.kv.block_size,
            "num_preemptions": s.num_preemptions,
            "num_preemptions_by_cause": dict(s.preemptions),
            "num_recomputed_tokens": s.num_recomputed_tokens,
            "fast_lane_running": s.num_fast_lane_running,
            "fast_lane_slots": s.max_running - self.config.max_num_seqs,
            "prefix_cache_queries": s.prefix_cache_queries,
            "prefix_cache_hits": s.prefix_cache_hits,
            "prefix_cache_hit_rate": s.prefix_cache_hits / s.prefix_cache_queries if s.prefix_cache_queries else 0.0,
            "num_prompt_tokens_computed": self.num_prompt_tokens_computed,
            "spec_decode": self.spec_decoder.metrics.as_dict() if self.spec_decoder is not None else None,
        }
