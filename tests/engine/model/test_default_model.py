"""The embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF) answers, and matches transformers."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from engine import LLM, SamplingParams

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(progress=False)


def test_default_model_knows_paris(llm):
    out = llm.chat(QUESTION, SamplingParams(max_tokens=32, temperature=0.0))[0].outputs[0]
    assert "Paris" in out.text


def test_first_greedy_tokens_equal_transformers_gguf_loading(llm, default_gguf):
    prompt = llm.tokenizer.apply_chat_template(QUESTION)
    ours = llm.generate(prompt_token_ids=[prompt], sampling_params=SamplingParams(
        max_tokens=32, temperature=0.0, ignore_eos=True))[0].outputs[0].token_ids
    ref_model = AutoModelForCausalLM.from_pretrained(default_gguf.parent, gguf_file=default_gguf.name,
                                                     dtype=torch.float32).eval()
    ref = ref_model.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False, eos_token_id=None,
                             pad_token_id=0)[0, len(prompt):].tolist()
    assert ours == ref
