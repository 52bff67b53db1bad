"""The Triton backend end to end under the interpreter: same greedy tokens as the torch backend and transformers."""

import pytest
import torch
from reference import hf_greedy, random_prompts

from engine import LLM, SamplingParams
from engine.attention import TorchAttentionBackend, make_attention_backend


def test_triton_backend_matches_torch_backend_and_transformers(tiny_models):
    model_dir = tiny_models["exaone_hybrid"]  # window 8: every prompt is longer
    # chunked prefill (chunks of 12 cross blocks of 4), more sequences than max_num_seqs
    args = dict(progress=False, block_size=4, max_num_batched_tokens=12, max_num_seqs=2)
    params = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    prompts = random_prompts(49152, [13, 26, 9, 17], seed=5)
    results = {}
    for backend in ("torch", "triton"):
        llm = LLM(model=str(model_dir), attention_backend=backend, **args)
        results[backend] = [o.outputs[0].token_ids for o in llm.generate(prompt_token_ids=prompts,
                                                                         sampling_params=params)]
        assert all(n == 0 for n in llm.engine.stats()["kv_blocks_used"].values())
    assert results["triton"] == results["torch"]
    assert results["triton"] == [t for t, _ in hf_greedy(model_dir, prompts, 10)]


def test_backend_choice():
    cpu = torch.device("cpu")
    assert isinstance(make_attention_backend("auto", cpu, 4, 16, 2), TorchAttentionBackend)
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        make_attention_backend("flash", cpu, 4, 16, 2)


def test_triton_on_cpu_without_interpreter_says_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        make_attention_backend("triton", torch.device("cpu"), 4, 16, 2)
