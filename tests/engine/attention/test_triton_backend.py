"""The Triton backend end to end under the interpreter: same greedy tokens as the torch backend and transformers."""

import pytest
import torch
from reference import hf_greedy, random_prompts

from engine import LLM, SamplingParams
from engine.attention import triton_backend
from engine.attention.selector import make_attention_backend
from engine.attention.testing import make_case, run_reference
from engine.attention.torch_backend import TorchAttentionBackend
from engine.attention.triton_backend import TritonAttentionBackend
from exaone_kernels.attention import paged_attention


def test_triton_backend_matches_torch_backend_and_transformers(tiny_models):
    model_dir = tiny_models["exaone_hybrid"]  # window 8: every prompt is longer
    # chunked prefill (chunks of 12 cross blocks of 4), more sequences than max_num_seqs
    args = dict(progress=False, block_size=4, max_num_batched_tokens=12, max_num_seqs=2)
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    prompts = random_prompts(49152, [13, 22, 9, 15], seed=5)
    results = {}
    for backend in ("torch", "triton"):
        llm = LLM(model=str(model_dir), attention_backend=backend, **args)
        results[backend] = [o.outputs[0].token_ids for o in llm.generate(prompt_token_ids=prompts,
                                                                         sampling_params=params)]
        assert all(n == 0 for n in llm.engine.stats()["kv_blocks_used"].values())
    assert results["triton"] == results["torch"]
    assert results["triton"] == [t for t, _ in hf_greedy(model_dir, prompts, 8)]


def test_backend_choice():
    cpu = torch.device("cpu")
    assert isinstance(make_attention_backend("auto", cpu, 4, 16, 2), TorchAttentionBackend)
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        make_attention_backend("flash", cpu, 4, 16, 2)


def test_triton_on_cpu_without_interpreter_says_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        make_attention_backend("triton", torch.device("cpu"), 4, 16, 2)


def test_padded_decode_batch_writes_and_changes_nothing(tiny_models):
    """What a captured decode graph runs: padding rows (slot -1, seq_len 0) leave real rows and caches alone."""
    llm = LLM(model=str(tiny_models["exaone_hybrid"]), attention_backend="triton", progress=False, max_num_seqs=8)
    engine = llm.engine
    for i, prompt in enumerate(random_prompts(49152, [10, 3, 9], seed=7)):
        engine.add_request(f"r{i}", prompt, SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
    engine.step()  # prefills all three; the next batch is three decodes
    batch = engine.scheduler.schedule()
    assert batch.num_new_tokens == [1, 1, 1]
    runner = engine.runner
    results = []
    for padded in (3, 8):
        caches = [c.clone() for c in runner.layer_caches]
        meta, ids = runner.metadata(runner.prepare(batch, padded_seqs=padded))
        assert (meta.layouts["sliding"].slot_mapping[3:] < 0).all() and not meta.seq_lens[3:].any()
        with torch.inference_mode():
            hidden = runner.model(ids, meta, caches)
        assert torch.isfinite(hidden).all()
        results.append((hidden[:3], caches))
    (plain, plain_caches), (padded, padded_caches) = results
    torch.testing.assert_close(padded, plain, rtol=1e-5, atol=1e-5)
    for a, b in zip(plain_caches, padded_caches, strict=True):  # a padding write would differ by O(1)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [None, 6])
def test_long_decodes_beside_a_prefill_chunk_split_k(monkeypatch, window):
    """A mixed step whose decodes are long: the decodes get their own split-K launch, the chunks another, and
    the result equals the torch backend's (over a NaN-poisoned cache: nothing unwritten is read)."""
    launches = []

    def recording(*args, **kwargs):
        launches.append((args[0].shape[0], kwargs["scratch"] is not None, kwargs["tile_n"]))
        return paged_attention(*args, **kwargs)

    monkeypatch.setattr(triton_backend, "paged_attention", recording)
    case = make_case([45, 30, 7], [1, 9, 5], 4, 2, 16, window=window, block_size=4, max_chunk=16, seed=2)
    backend = TritonAttentionBackend(torch.device("cpu"), 4, 16, max_num_seqs=4)
    backend.split_k_min_context = 40  # the decode's 46 tokens count as long here
    out = backend.forward(case.q, case.k, case.v, case.kv_cache.clone(), case.layout, window, case.meta, 0.25)
    assert launches == [(1, True, 32), (14, False, 64)]  # the chunks with the prefill tile
    torch.testing.assert_close(out, run_reference(case, 0.25), rtol=1e-4, atol=1e-4)
    launches.clear()
    backend.split_k_min_context = 47  # now short: one launch for the whole step, as before
    again = backend.forward(case.q, case.k, case.v, case.kv_cache.clone(), case.layout, window, case.meta, 0.25)
    assert launches == [(15, False, 64)]
    torch.testing.assert_close(again, out, rtol=1e-4, atol=1e-4)
