"""Offline API with vLLM's names: `LLM(...).generate(...)` and `.chat(...)`."""

from __future__ import annotations

import itertools
from collections.abc import Sequence as Seq
from dataclasses import fields, replace

import torch
from tqdm import tqdm

from engine.config import EngineConfig
from engine.core.llm_engine import LLMEngine
from engine.core.outputs import CompletionOutput, RequestOutput
from engine.core.sampling_params import SamplingParams


class LLM:
    """Load a model once, then generate for batches of prompts through the continuous-batching engine."""

    def __init__(self, model: str | None = None, device: str = "cpu", dtype: str | torch.dtype | None = None,
                 progress: bool = True, **engine_args) -> None:
        names = {f.name for f in fields(EngineConfig)}
        unknown = set(engine_args) - names
        if unknown:
            raise TypeError(f"unknown engine arguments: {', '.join(sorted(unknown))}")
        self.engine = LLMEngine(model, device, dtype, EngineConfig(**engine_args), progress=progress)
        self.tokenizer = self.engine.tokenizer
        self._ids = itertools.count()

    def generate(self, prompts: str | list[str] | None = None,
                 sampling_params: SamplingParams | list[SamplingParams] | None = None,
                 prompt_token_ids: list[list[int]] | None = None, use_tqdm: bool = False) -> list[RequestOutput]:
        """One finished RequestOutput per prompt, in the order given."""
        if prompts is not None and prompt_token_ids is not None:
            raise ValueError("pass prompts or prompt_token_ids, not both")
        inputs: list[str | list[int]] = (
            [prompts] if isinstance(prompts, str) else list(prompts or prompt_token_ids or []))
        if isinstance(sampling_params, Seq):
            if len(sampling_params) != len(inputs):
                raise ValueError("sampling_params must have one entry per prompt")
            params_list = list(sampling_params)
        else:
            params_list = [sampling_params or SamplingParams()] * len(inputs)
        ids = []
        for prompt, params in zip(inputs, params_list, strict=True):
            request_id = f"offline-{next(self._ids)}"
            # each request gets its own copy: the engine fills in defaults such as max_tokens
            self.engine.add_request(request_id, prompt, replace(params))
            ids.append(request_id)
        return self._run(ids, use_tqdm)

    def chat(self, messages: list[dict] | list[list[dict]], sampling_params: SamplingParams | None = None,
             use_tqdm: bool = False, **template_kwargs) -> list[RequestOutput]:
        """Apply the model's chat template to one conversation (or a list of them), then generate."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = [self.tokenizer.apply_chat_template(conv, add_generation_prompt=True, **template_kwargs)
                   for conv in conversations]
        return self.generate(prompt_token_ids=prompts, sampling_params=sampling_params, use_tqdm=use_tqdm)

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix, e.g. before timing a cold run."""
        self.engine.reset_prefix_cache()

    def _run(self, request_ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        results: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(request_ids), desc="Generating", disable=not use_tqdm)
        while self.engine.has_unfinished():
            for out in self.engine.step():
                acc = results.get(out.request_id)
                if acc is None:
                    acc = results[out.request_id] = RequestOutput(out.request_id, out.prompt_token_ids, [], False)
                if out.prompt_logprobs is not None:
                    acc.prompt_logprobs = out.prompt_logprobs
                acc.metrics = out.metrics
                acc.num_cached_tokens = out.num_cached_tokens
                for delta in out.outputs:
                    while len(acc.outputs) <= delta.index:
                        acc.outputs.append(CompletionOutput(len(acc.outputs), "", [], None))
                    acc.outputs[delta.index].extend(delta)
                if out.finished:
                    acc.finished = True
                    bar.update(1)
        bar.close()
        return [results[i] for i in request_ids]
