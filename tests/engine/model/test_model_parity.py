"""Parity with transformers: greedy tokens and per-token logprobs on random-weight checkpoints."""

import pytest
import torch
from fixtures_cpu import AVX2_ONLY, force_cpu
from reference import hf_greedy, random_prompts
from transformers import AutoModelForCausalLM

from engine import LLM, SamplingParams
from engine import cpu_features as cpu
from engine.cpu_features import linear_path

NEW_TOKENS = 32


@pytest.mark.parametrize("kind", ["exaone_hybrid", "exaone_global", "llama"])
def test_greedy_tokens_and_logprobs_match_transformers(tiny_models, kind):
    model_dir = tiny_models[kind]
    llm = LLM(model=str(model_dir), progress=False)
    assert llm.engine.model.model.layers[0].mlp.down_proj.packed is not None  # the CPU default: oneDNN-packed
    prompts = random_prompts(llm.engine.model_config.vocab_size, [20, 33, 27, 40])
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True, logprobs=0)
    outputs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
    for out, (ref_tokens, ref_lps) in zip(outputs, hf_greedy(model_dir, prompts, NEW_TOKENS), strict=True):
        sample = out.outputs[0]
        assert sample.token_ids == ref_tokens
        ours = torch.tensor([lp.logprob for lp in sample.logprobs])
        assert torch.allclose(ours, torch.tensor(ref_lps), atol=1e-4, rtol=0), (ours - torch.tensor(ref_lps)).abs().max()
        assert sample.finish_reason == "length"


def test_prompt_logprobs_match_transformers_across_chunks(tiny_models):
    model_dir = tiny_models["exaone_hybrid"]
    llm = LLM(model=str(model_dir), progress=False, max_num_batched_tokens=16, block_size=4)
    prompts = random_prompts(llm.engine.model_config.vocab_size, [37, 9], seed=8)
    outputs = llm.generate(prompt_token_ids=prompts, sampling_params=SamplingParams(
        max_tokens=2, temperature=0.0, prompt_logprobs=3))
    ref_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    for prompt, out in zip(prompts, outputs, strict=True):
        with torch.no_grad():
            ref = torch.log_softmax(ref_model(torch.tensor([prompt])).logits[0].float(), -1)
        entries = out.prompt_logprobs
        assert entries[0] is None and len(entries) == len(prompt)
        for pos, entry in enumerate(entries[1:], start=1):
            assert entry.token_id == prompt[pos]
            assert abs(entry.logprob - ref[pos - 1, prompt[pos]].item()) < 1e-4
            top_ids = [t for t, _ in entry.top]
            assert top_ids == ref[pos - 1].topk(3).indices.tolist()


def test_plain_weights_match_transformers_too(tiny_models):
    """--no-prepack-weights keeps F.linear on the plain weights, with the same greedy tokens."""
    model_dir = tiny_models["exaone_hybrid"]
    llm = LLM(model=str(model_dir), progress=False, prepack_weights=False)
    assert llm.engine.model.model.layers[0].mlp.down_proj.packed is None
    prompts = random_prompts(llm.engine.model_config.vocab_size, [20, 33])
    outputs = llm.generate(prompt_token_ids=prompts, sampling_params=SamplingParams(
        max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True))
    for out, (ref_tokens, _) in zip(outputs, hf_greedy(model_dir, prompts, NEW_TOKENS), strict=True):
        assert out.outputs[0].token_ids == ref_tokens


@pytest.mark.parametrize("machine", ["this", "avx2-only"])
def test_bf16_on_cpu_stays_close_to_fp32(tiny_models, monkeypatch, machine):
    """--dtype bfloat16: packed bf16 weights where oneDNN's bf16 runs, plain bf16 F.linear on an AVX2-only CPU;
    fp32 logits, logprobs of the fp32 greedy tokens within bf16's rounding either way."""
    model_dir = tiny_models["exaone_hybrid"]
    prompts = random_prompts(256, [20, 33])
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    fp32 = LLM(model=str(model_dir), progress=False).generate(prompt_token_ids=prompts, sampling_params=params)
    if machine == "avx2-only":
        force_cpu(monkeypatch, AVX2_ONLY)
    llm = LLM(model=str(model_dir), dtype="bfloat16", progress=False)
    down_proj = llm.engine.model.model.layers[0].mlp.down_proj
    if linear_path(torch.bfloat16)[0]:
        assert down_proj.packed.dtype == torch.bfloat16
    else:
        assert machine == "avx2-only" or not cpu.cpu_features().onednn_bf16
        assert down_proj.packed is None and down_proj.weight.dtype == torch.bfloat16
    bf16 = llm.generate(prompt_token_ids=prompts, sampling_params=params)
    for ref, out in zip(fp32, bf16, strict=True):
        ref_lps = torch.tensor([e.logprob for e in ref.prompt_logprobs[1:]])
        lps = torch.tensor([e.logprob for e in out.prompt_logprobs[1:]])
        assert (ref_lps - lps).abs().max() < 0.1, (ref_lps - lps).abs().max()


def test_compiled_layers_match_transformers(tiny_models):
    """--compile: the decoder layers as one inductor graph, packed matmuls and paged attention as opaque ops."""
    model_dir = tiny_models["exaone_hybrid"]  # sliding and global layers, QK-norm, RoPE on the sliding ones
    llm = LLM(model=str(model_dir), progress=False, compile=True, max_num_batched_tokens=32)
    assert llm.engine.model.compiled is not None
    prompts = random_prompts(llm.engine.model_config.vocab_size, [20, 33, 27, 40])
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True, logprobs=0)
    outputs = llm.generate(prompt_token_ids=prompts, sampling_params=params)  # chunked prefills and decodes
    for out, (ref_tokens, ref_lps) in zip(outputs, hf_greedy(model_dir, prompts, NEW_TOKENS), strict=True):
        sample = out.outputs[0]
        assert sample.token_ids == ref_tokens
        ours = torch.tensor([lp.logprob for lp in sample.logprobs])
        assert torch.allclose(ours, torch.tensor(ref_lps), atol=1e-4, rtol=0)
