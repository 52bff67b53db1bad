"""transformers as the reference implementation for engine tests."""

import torch
from transformers import AutoModelForCausalLM, GenerationConfig


def hf_greedy(model_dir, prompts: list[list[int]], new_tokens: int) -> list[tuple[list[int], list[float]]]:
    """transformers' own greedy generate, one prompt at a time: (tokens, raw-logit logprobs) each."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    gen = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    results = []
    for prompt in prompts:
        out = model.generate(torch.tensor([prompt]), generation_config=gen, output_logits=True,
                             return_dict_in_generate=True)
        tokens = out.sequences[0, len(prompt):].tolist()
        lps = [torch.log_softmax(step[0].float(), -1)[t].item() for step, t in zip(out.logits, tokens, strict=True)]
        results.append((tokens, lps))
    return results


def random_prompts(vocab: int, lengths: list[int], seed: int = 0) -> list[list[int]]:
    """Random token-id prompts of the given lengths (ids >= 100 to avoid special tokens)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(100, vocab, (n,), generator=g).tolist() for n in lengths]
