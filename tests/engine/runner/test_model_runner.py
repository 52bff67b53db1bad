"""The model runner's CUDA-side preparation, run on the CPU: one-copy staging of the step inputs, the warm-up prefill."""

import torch
from reference import random_prompts

from engine import LLM, SamplingParams
from engine.core.scheduler import ScheduledBatch


def test_staged_step_inputs_equal_the_per_tensor_copies(tiny_models):
    """Through the packed buffer and the persistent buffers (what CUDA uses, run here on the CPU): equal tensors
    for a mixed step over both pools, and a padded decode step, each in the persistent buffers."""
    llm = LLM(model=str(tiny_models["exaone_hybrid"]), progress=False, block_size=4, max_num_batched_tokens=24,
              max_num_seqs=4, enforce_eager=True)
    engine, runner = llm.engine, llm.engine.runner
    for i, prompt in enumerate(random_prompts(49152, [13, 5, 30], seed=4)):
        engine.add_request(f"r{i}", prompt, SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
    engine.step()  # some prefill done: the next batch mixes decodes with the rest of a chunked prompt
    batch = engine.scheduler.schedule()
    assert 1 in batch.num_new_tokens and max(batch.num_new_tokens) > 1
    steps = [runner.prepare(batch), runner.prepare(ScheduledBatch(), padded_seqs=3)]
    plain = [runner.metadata(inputs) for inputs in steps]
    runner._allocate_buffers(engine.config)
    buffers = {t.untyped_storage().data_ptr() for t in runner.buffers.values()}
    for inputs, (want, want_ids) in zip(steps, plain, strict=True):
        meta, ids = runner.metadata(inputs)
        pairs = [(ids, want_ids), (meta.positions, want.positions), (meta.seq_lens, want.seq_lens),
                 (meta.query_start_loc, want.query_start_loc)]
        for kind, layout in meta.layouts.items():
            pairs += [(layout.block_tables, want.layouts[kind].block_tables),
                      (layout.slot_mapping, want.layouts[kind].slot_mapping)]
        for got, expected in pairs:
            assert torch.equal(got, expected)
            assert got.untyped_storage().data_ptr() in buffers  # where a captured graph reads it
        assert (meta.query_start_loc_host, meta.seq_lens_host) == (want.query_start_loc_host, want.seq_lens_host)


def test_warm_up_prefill_touches_no_cache(tiny_models):
    """The start-up prefill that compiles the prefill kernels on CUDA (run here through the interpreter)."""
    llm = LLM(model=str(tiny_models["exaone_hybrid"]), progress=False, attention_backend="triton", block_size=4)
    runner = llm.engine.runner
    runner.caches = {kind: cache.normal_() for kind, cache in runner.caches.items()}
    before = {kind: cache.clone() for kind, cache in runner.caches.items()}
    runner.warm_up_prefill()
    for kind, cache in runner.caches.items():
        assert torch.equal(cache, before[kind])
