"""In-place decode attention, the C++ kernel and the compiled loop: equal to gathering the context for SDPA
(the compiled loop with one graph for every shape), and a fallback to the gather where neither runs."""

import logging
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from fixtures_cpu import AVX2_ONLY, force_cpu
from reference import hf_greedy, random_prompts
from torch._dynamo.eval_frame import _debug_get_cache_entry_list

from engine import LLM, SamplingParams
from engine.attention import cpu_decode, paged_decode
from engine.attention.paged_decode import InPlaceDecode, compiled_paged_decode, paged_decode_attention
from engine.attention.torch_backend import TorchAttentionBackend, _group_mask, attention_mask, key_positions

BLOCK, KV_HEADS, GROUP, DIM = 4, 2, 3, 16


def gathered(q, kv_cache, tables, mask, scale):
    """The gather + SDPA path the torch backend takes without the compiled loop."""
    meta = SimpleNamespace(scratch={})
    blocks = TorchAttentionBackend._step_blocks(meta, SimpleNamespace(block_tables=tables), 0, len(tables),
                                                kv_cache.shape[1])
    return TorchAttentionBackend._paged(q[:, None], kv_cache, blocks, mask, scale, meta)[:, 0]


def case(seq_lens: list[int], dtype: torch.dtype, ring: int | None = None, window: int | None = None, seed: int = 0):
    """Random cache and queries; tables hold shuffled blocks, -1 past each sequence's last block."""
    gen = torch.Generator().manual_seed(seed)
    width = ring or max(-(-n // BLOCK) for n in seq_lens)
    num_blocks = len(seq_lens) * width + 3
    kv_cache = torch.randn(2, num_blocks, BLOCK, KV_HEADS, DIM, generator=gen).to(dtype)
    order = torch.randperm(num_blocks, generator=gen)
    tables = torch.full((len(seq_lens), width), -1, dtype=torch.int64)
    for i, n in enumerate(seq_lens):
        held = min(width, -(-n // BLOCK))
        tables[i, :held] = order[i * width : i * width + held]
    lens = torch.tensor(seq_lens)
    mask = attention_mask((lens - 1)[:, None], key_positions(tables, lens, BLOCK, ring), window)
    q = torch.randn(len(seq_lens), KV_HEADS * GROUP, DIM, generator=gen).to(dtype)
    return q, kv_cache, tables.clamp(min=0), _group_mask(mask, GROUP)


@pytest.mark.parametrize(("seq_lens", "ring", "window"), [
    ([1], None, None),  # one stream, one block
    ([5, 17, 3, 9], None, None),  # -1 entries past the shorter sequences
    ([30, 12, 7], 3, 10),  # a sliding ring: entries wrap, the window masks what was recycled
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_decode_equals_the_gather(seq_lens, ring, window, dtype):
    q, kv_cache, tables, mask = case(seq_lens, dtype, ring, window)
    scale = DIM ** -0.5
    got = compiled_paged_decode(q, kv_cache, tables, mask, scale)
    want = gathered(q, kv_cache, tables, mask, scale)
    assert got.dtype == dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, **({} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}))


@torch.inference_mode()
def test_one_graph_serves_every_batch_and_width():
    compiled_paged_decode(*case([9, 4], torch.float32), 0.25)  # the float32 graph, if no engine compiled it
    graphs = len(_debug_get_cache_entry_list(paged_decode_attention.__code__))
    for seq_lens in ([1], [40], [2, 2, 2, 2, 2], [13, 1, 22]):
        q, kv_cache, tables, mask = case(seq_lens, torch.float32, seed=len(seq_lens))
        torch.testing.assert_close(compiled_paged_decode(q, kv_cache, tables, mask, 0.25),
                                   paged_decode_attention(q, kv_cache, tables, mask, 0.25))
    assert len(_debug_get_cache_entry_list(paged_decode_attention.__code__)) == graphs  # none per batch or width


needs_kernel = pytest.mark.skipif(not cpu_decode.kernel_available(), reason="no AVX2 C++ kernels on this machine")


@needs_kernel
@pytest.mark.parametrize(("seq_lens", "ring", "window"), [
    ([1], None, None),
    ([5, 17, 3, 9], None, None),  # a task per sequence
    ([30, 12, 7], 3, 10),  # split by KV head
    ([40], None, None),  # one sequence: split by KV head and by blocks, the parts merged
    ([33], None, 9),  # the window hides whole parts
])
def test_cpu_kernel_decode_equals_the_gather(seq_lens, ring, window):
    q, kv_cache, tables, mask = case(seq_lens, torch.float32, ring, window)
    got = cpu_decode.cpu_paged_decode(q, kv_cache, tables, mask, DIM ** -0.5)
    torch.testing.assert_close(got, gathered(q, kv_cache, tables, mask, DIM ** -0.5))


def test_cpu_kernel_declines_what_it_does_not_take(monkeypatch):
    assert not cpu_decode.serves(torch.bfloat16, 6, 2, 16)  # bf16: the other paths
    assert not cpu_decode.serves(torch.float32, 6, 2, 12)  # a head size that is not a multiple of 8
    assert not cpu_decode.serves(torch.float32, 34, 2, 16)  # 17 query heads per KV head
    force_cpu(monkeypatch, replace(AVX2_ONLY, avx2=False))
    assert not cpu_decode.serves(torch.float32, 6, 2, 16)  # no AVX2, whatever was built before


def test_without_avx2_the_engine_decodes_by_the_gather_as_transformers_does(tiny_models, monkeypatch):
    force_cpu(monkeypatch, replace(AVX2_ONLY, avx2=False))
    monkeypatch.setattr(cpu_decode, "cpu_paged_decode", None)  # any call would fail
    model_dir = tiny_models["exaone_hybrid"]
    prompts = random_prompts(49152, [13, 22, 9], seed=5)
    llm = LLM(model=str(model_dir), progress=False, block_size=4)
    assert not llm.engine.model.model.layers[0].self_attn.backend.cpu_kernel
    assert run_engine(llm, prompts) == [t for t, _ in hf_greedy(model_dir, prompts, 8)]


@needs_kernel
def test_engine_decodes_with_the_cpu_kernel_as_transformers_does(tiny_models, monkeypatch):
    model_dir = tiny_models["exaone_hybrid"]  # window 8: the sliding rings wrap during these prompts
    prompts = random_prompts(49152, [13, 22, 9], seed=5)
    calls = []
    kernel = cpu_decode.cpu_paged_decode

    def counted(*args):
        calls.append(args[0].shape[0])
        return kernel(*args)

    monkeypatch.setattr(cpu_decode, "cpu_paged_decode", counted)
    llm = LLM(model=str(model_dir), progress=False, block_size=4)
    assert llm.engine.model.model.layers[0].self_attn.backend.cpu_kernel
    assert not in_place_decode(llm).ready  # the kernel takes every fp32 decode: the loop is not compiled
    assert run_engine(llm, prompts) == [t for t, _ in hf_greedy(model_dir, prompts, 8)]
    assert 3 in calls  # decode steps of all three sequences ran in the kernel


def run_engine(llm: LLM, prompts: list[list[int]]) -> list[list[int]]:
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    return [o.outputs[0].token_ids for o in llm.generate(prompt_token_ids=prompts, sampling_params=params)]


def in_place_decode(llm: LLM) -> InPlaceDecode:
    return llm.engine.model.model.layers[0].self_attn.backend.in_place_decode


def test_engine_decodes_in_place_as_transformers_does(tiny_models, monkeypatch):
    model_dir = tiny_models["exaone_hybrid"]  # window 8: the sliding rings wrap during these prompts
    prompts = random_prompts(49152, [13, 22, 9], seed=5)
    calls = []

    def counted(*args):
        calls.append(args[0].shape[0])
        return compiled_paged_decode(*args)

    monkeypatch.setattr(paged_decode, "compiled_paged_decode", counted)
    monkeypatch.setattr(TorchAttentionBackend, "COMPILED_DECODE_MIN_TOKENS", 0)  # every batch of 2+ decodes
    monkeypatch.setattr(cpu_decode, "kernel_available", lambda: False)  # the loop, not the C++ kernel
    llm = LLM(model=str(model_dir), progress=False, block_size=4)
    assert in_place_decode(llm).ready and calls == [2]  # compiled at start-up, on a stand-in batch of 2
    graphs = len(_debug_get_cache_entry_list(paged_decode_attention.__code__))
    expected = [t for t, _ in hf_greedy(model_dir, prompts, 8)]
    assert run_engine(llm, prompts) == expected
    assert 3 in calls  # decode steps of all three sequences read the cache in place
    # with the graph compiled at start-up: nothing compiles mid-serving
    assert len(_debug_get_cache_entry_list(paged_decode_attention.__code__)) == graphs
    calls.clear()
    eager = LLM(model=str(model_dir), progress=False, block_size=4, enforce_eager=True)
    assert not in_place_decode(eager).ready
    assert run_engine(eager, prompts) == expected and not calls  # --enforce-eager: the gather only


def test_decode_falls_back_to_the_gather_when_it_cannot_compile(tiny_models, monkeypatch, caplog):
    def no_compiler(*args):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(paged_decode, "compiled_paged_decode", no_compiler)
    monkeypatch.setattr(TorchAttentionBackend, "COMPILED_DECODE_MIN_TOKENS", 0)
    monkeypatch.setattr(cpu_decode, "kernel_available", lambda: False)  # no C++ kernel either
    model_dir = tiny_models["exaone_hybrid"]
    prompts = random_prompts(49152, [13, 6], seed=3)
    with caplog.at_level(logging.WARNING, logger="engine.attention.paged_decode"):
        llm = LLM(model=str(model_dir), progress=False, block_size=4)
    assert "decode attention cannot be compiled here (RuntimeError: no C++ compiler)" in caplog.text
    assert not in_place_decode(llm).ready
    assert run_engine(llm, prompts) == [t for t, _ in hf_greedy(model_dir, prompts, 8)]
