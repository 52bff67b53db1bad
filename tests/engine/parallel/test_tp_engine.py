"""tensor_parallel_size 2 (rank 0 here, one gloo worker) against size 1 and transformers; a dead worker is loud."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
from fixtures_models import make_tiny_model
from reference import hf_greedy, random_prompts

from engine import LLM, SamplingParams

NEW_TOKENS = 12
# Small chunks and blocks: prompts are prefilled in several chunks, sliding rings wrap.
ENGINE_ARGS = {"max_num_batched_tokens": 16, "block_size": 4, "kv_cache_memory": 32 << 20}


@pytest.fixture(scope="module")
def models(tiny_models, tmp_path_factory):
    # A Llama with one KV head: at size 2 it is replicated on both ranks (vLLM's rule).
    llama = make_tiny_model(tmp_path_factory.mktemp("tp"), "llama", num_key_value_heads=1)
    return {"exaone_hybrid": tiny_models["exaone_hybrid"], "llama_one_kv_head": llama}


def _run(llm: LLM, prompts: list[list[int]]) -> list[tuple[list[int], list[float]]]:
    greedy = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True, logprobs=0)
    outs = llm.generate(prompt_token_ids=prompts, sampling_params=greedy)
    # n=2 forks the prompt's blocks: the 33-token prompt ends inside a block (block_size 4), so the fork
    # copies that partial block, on every rank; prompt logprobs take every token's logits
    assert len(prompts[1]) % ENGINE_ARGS["block_size"]
    forked = llm.generate(prompt_token_ids=prompts[1:2], sampling_params=SamplingParams(
        max_tokens=4, temperature=0.0, ignore_eos=True, n=2, prompt_logprobs=2))[0]
    results = [(o.outputs[0].token_ids, [lp.logprob for lp in o.outputs[0].logprobs]) for o in outs]
    results += [(s.token_ids, [p.logprob for p in forked.prompt_logprobs[1:]]) for s in forked.outputs]
    return results


@pytest.mark.parametrize("kind", ["exaone_hybrid", "llama_one_kv_head"])
def test_tp2_greedy_matches_tp1_and_transformers(models, kind):
    model_dir = models[kind]
    tp2 = LLM(model=str(model_dir), progress=False, tensor_parallel_size=2, **ENGINE_ARGS)
    try:
        assert tp2.engine.model.model.layers[0].self_attn.num_heads == 2  # 4 heads split over 2 ranks
        prompts = random_prompts(tp2.engine.model_config.vocab_size, [20, 33, 27, 40], seed=3)
        ours = _run(tp2, prompts)
    finally:
        tp2.engine.shutdown()
    reference = _run(LLM(model=str(model_dir), progress=False, **ENGINE_ARGS), prompts)
    for (tokens, lps), (ref_tokens, ref_lps) in zip(ours, reference, strict=True):
        assert tokens == ref_tokens
        assert torch.allclose(torch.tensor(lps), torch.tensor(ref_lps), atol=1e-4, rtol=0)
    hf = hf_greedy(model_dir, prompts, NEW_TOKENS)
    assert [tokens for tokens, _ in ours[: len(prompts)]] == [tokens for tokens, _ in hf]


def test_a_dead_worker_fails_the_engine_at_once(models):
    llm = LLM(model=str(models["exaone_hybrid"]), progress=False, tensor_parallel_size=2, **ENGINE_ARGS)
    try:
        worker = llm.engine.executor.workers[0]
        os.kill(worker.pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(RuntimeError, match="exited with code -9"):
            while True:  # the watcher notices within moments; a step then refuses to start
                llm.generate(prompt_token_ids=[[101, 102, 103]], sampling_params=SamplingParams(max_tokens=2))
                assert time.monotonic() - start < 20, "a dead worker went unnoticed"
    finally:
        llm.engine.shutdown()



def test_tp2_refuses_speculative_decoding_for_now(tiny_models):
    with pytest.raises(ValueError, match="cannot be combined with --tensor-parallel-size"):
        LLM(model=str(tiny_models["exaone_hybrid"]), progress=False, tensor_parallel_size=2,
            speculative_config={"method": "ngram"}, **ENGINE_ARGS)
