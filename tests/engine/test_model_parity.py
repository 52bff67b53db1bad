"""Parity with transformers: greedy tokens and per-token logprobs on random-weight checkpoints."""

import pytest
import torch
from reference import hf_greedy, random_prompts

from engine import LLM, SamplingParams

NEW_TOKENS = 32


@pytest.mark.parametrize("kind", ["exaone_hybrid", "exaone_global", "llama"])
def test_greedy_tokens_and_logprobs_match_transformers(tiny_models, kind):
    model_dir = tiny_models[kind]
    llm = LLM(model=str(model_dir), progress=False)
    prompts = random_prompts(llm.engine.model_config.vocab_size, [20, 33, 27, 40])
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True, logprobs=0)
    outputs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
    for out, (ref_tokens, ref_lps) in zip(outputs, hf_greedy(model_dir, prompts, NEW_TOKENS), strict=True):
        sample = out.outputs[0]
        assert sample.token_ids == ref_tokens
        ours = torch.tensor([lp.logprob for lp in sample.logprobs])
        assert torch.allclose(ours, torch.tensor(ref_lps), atol=1e-4, rtol=0), (ours - torch.tensor(ref_lps)).abs().max()
        assert sample.finish_reason == "length"
