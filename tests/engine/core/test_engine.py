"""Continuous batching: batch invariance, ring wrap-around, preemption, leaks, seeds, stop strings, n > 1."""

import logging
import math
import random

import pytest
from engine_checks import assert_no_blocks_held, greedy, tokens_of
from fixtures_models import make_tiny_model
from reference import hf_greedy, random_prompts

from engine import LLM, SamplingParams
from engine.errors import RequestRejected


@pytest.mark.parametrize("kind", ["exaone_hybrid", "default"])
def test_batch_invariance_with_chunked_prefill(tiny_models, kind):
    model = None if kind == "default" else str(tiny_models[kind])
    llm = LLM(model=model, progress=False, max_num_batched_tokens=48, max_num_seqs=16)
    lengths = [3, 17, 40, 9, 25, 60, 5, 33, 12, 48, 7, 21, 30, 2, 55, 14]
    prompts = random_prompts(llm.engine.model_config.vocab_size, lengths, seed=1)
    new = 8 if kind == "default" else 16
    together = tokens_of(llm.generate(prompt_token_ids=prompts, sampling_params=greedy(new)))
    alone = [tokens_of(llm.generate(prompt_token_ids=[p], sampling_params=greedy(new)))[0] for p in prompts]
    assert together == alone
    assert_no_blocks_held(llm)


def test_ring_wraps_within_bound_and_matches_transformers(tmp_path):
    window, block, chunk = 8, 4, 11
    model_dir = make_tiny_model(tmp_path, "exaone_hybrid", sliding_window=window)
    llm = LLM(model=str(model_dir), progress=False, block_size=block, max_num_batched_tokens=chunk)
    engine = llm.engine
    prompts = random_prompts(engine.model_config.vocab_size, [19, 26, 13], seed=2)
    new = 4 * window
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", p, greedy(new))
    prefill_bound = math.ceil((window - 1 + chunk) / block) + 1
    decode_bound = math.ceil(window / block) + 1
    results: dict[str, list[int]] = {}
    while engine.has_unfinished():
        outs = engine.step()
        for out in outs:
            results.setdefault(out.request_id, []).extend(out.outputs[0].token_ids)
        stats = engine.stats()
        running = engine.scheduler.running
        used = stats["kv_blocks_used"]["sliding"]
        assert used <= len(running) * prefill_bound
        if running and all(s.num_computed_tokens > s.num_prompt_tokens for s in running):
            assert used <= len(running) * decode_bound, (used, len(running))
    ours = [results[f"r{i}"] for i in range(len(prompts))]
    assert ours == [t for t, _ in hf_greedy(model_dir, prompts, new)]
    assert_no_blocks_held(llm)


def test_preemption_recomputes_to_the_same_tokens(tiny_models):
    model = str(tiny_models["exaone_hybrid"])
    prompts = random_prompts(49152, [30, 41, 22, 35, 28, 44], seed=3)
    big = LLM(model=model, progress=False)
    expected = tokens_of(big.generate(prompt_token_ids=prompts, sampling_params=greedy(40)))
    small = LLM(model=model, progress=False, kv_cache_memory=96 * 1024, block_size=4, max_num_batched_tokens=64)
    got = tokens_of(small.generate(prompt_token_ids=prompts, sampling_params=greedy(40)))
    assert got == expected
    assert small.engine.stats()["num_preemptions"] > 0
    assert_no_blocks_held(small)


def test_requests_that_can_never_fit_are_rejected_with_numbers(tiny_models):
    llm = LLM(model=str(tiny_models["exaone_global"]), progress=False, max_model_len=64, kv_cache_memory=16 * 1024)
    assert llm.engine.config.max_model_len == 32  # lowered to the tokens one sequence can hold in the pool
    with pytest.raises(RequestRejected, match=r"max_model_len \(32\)"):
        llm.engine.add_request("long", list(range(100, 160)), SamplingParams(max_tokens=10))
    with pytest.raises(RequestRejected, match="KV blocks"):
        llm.engine.add_request("big", list(range(100, 120)), SamplingParams(max_tokens=10, n=2))
    with pytest.raises(RequestRejected, match="empty"):
        llm.engine.add_request("empty", [], SamplingParams())
    vocab = llm.engine.model_config.vocab_size
    for field, params in (("stop_token_ids", SamplingParams(stop_token_ids=[vocab])),
                          ("logit_bias", SamplingParams(logit_bias={vocab: 1.0})),
                          ("prompt", SamplingParams())):
        with pytest.raises(RequestRejected, match=rf"^{field} token ids must be in \[0, {vocab}\)") as error:
            llm.engine.add_request(field, [1, 2, vocab if field == "prompt" else 3], params)
        assert error.value.param == field
    assert not llm.engine.has_unfinished()


def test_random_requests_aborts_and_stop_strings_leave_no_block_behind(tiny_models):
    llm = LLM(model=str(tiny_models["exaone_hybrid"]), progress=False, block_size=4, max_num_batched_tokens=64,
              kv_cache_memory=256 * 1024, max_num_seqs=12)
    engine, rng = llm.engine, random.Random(4)
    stop_words = ["e", "a", " the", "in", "s "]
    pending = list(range(200))
    live: list[str] = []
    texts: dict[str, str] = {}
    tokens: dict[str, list[int]] = {}
    reasons: dict[str, str | None] = {}
    stops: dict[str, list[str]] = {}
    while pending or engine.has_unfinished():
        for _ in range(rng.randint(0, 6)):
            if pending:
                i = pending.pop()
                rid = f"r{i}"
                stops[rid] = rng.sample(stop_words, rng.randint(0, 2))
                params = SamplingParams(max_tokens=rng.randint(1, 24), temperature=rng.choice([0.0, 0.8]),
                                        seed=i, stop=stops[rid], n=rng.choice([1, 1, 2]))
                engine.add_request(rid, random_prompts(49152, [rng.randint(1, 40)], seed=i)[0], params)
                live.append(rid)
        if live and rng.random() < 0.15:
            rid = live.pop(rng.randrange(len(live)))
            engine.abort(rid)
        for out in engine.step():
            for o in out.outputs:
                key = f"{out.request_id}/{o.index}"
                texts[key] = texts.get(key, "") + o.text
                tokens[key] = tokens.get(key, []) + o.token_ids
                reasons[key] = o.finish_reason
            if out.finished and out.request_id in live:
                live.remove(out.request_id)
    assert_no_blocks_held(llm)
    for key, text in texts.items():
        request_stops = stops[key.split("/")[0]]
        full = llm.tokenizer.decode(tokens[key])
        if reasons[key] == "stop" and request_stops:  # the longest prefix before the first stop to complete
            end = next(e for e in range(len(full) + 1) if any(full[:e].endswith(s) for s in request_stops))
            cut = max(len(s) for s in request_stops if full[:end].endswith(s))
            assert text == full[: end - cut], (key, request_stops, text, full)
        elif reasons[key] == "length":  # no stop completed: the whole text
            assert text == full and not any(s in full for s in request_stops), (key, request_stops, text)


def test_seeded_sampling_is_independent_of_batch_composition(tiny_models):
    llm = LLM(model=str(tiny_models["llama"]), progress=False)
    prompts = random_prompts(49152, [12, 30, 7, 21], seed=5)
    seeded = SamplingParams(max_tokens=20, temperature=0.9, top_p=0.9, seed=1234, ignore_eos=True)
    alone = tokens_of(llm.generate(prompt_token_ids=[prompts[0]], sampling_params=seeded))[0]
    others = [SamplingParams(max_tokens=25, temperature=1.0, ignore_eos=True) for _ in prompts[1:]]
    mixed = tokens_of(llm.generate(prompt_token_ids=prompts, sampling_params=[seeded, *others]))[0]
    assert mixed == alone


def test_n_samples_share_the_prompt_prefill(tiny_models):
    # No prefix caching: the repeated prompt must be shared by forking, not found in the cache.
    llm = LLM(model=str(tiny_models["exaone_hybrid"]), progress=False, block_size=4, enable_prefix_caching=False)
    prompt = random_prompts(49152, [23], seed=6)[0]
    single = tokens_of(llm.generate(prompt_token_ids=[prompt], sampling_params=greedy(12)))[0]
    before = llm.engine.num_prompt_tokens_computed
    out = llm.generate(prompt_token_ids=[prompt], sampling_params=greedy(12, n=3))[0]
    assert [o.token_ids for o in out.outputs] == [single] * 3
    assert llm.engine.num_prompt_tokens_computed - before == len(prompt)  # prefilled once, forked twice
    before = llm.engine.num_prompt_tokens_computed
    sampled = llm.generate(prompt_token_ids=[prompt], sampling_params=SamplingParams(
        n=4, max_tokens=12, temperature=1.0, seed=2**63 - 2, ignore_eos=True))[0]  # seeds past int64: mod 2**64
    assert len({tuple(o.token_ids) for o in sampled.outputs}) > 1
    assert llm.engine.num_prompt_tokens_computed - before == len(prompt)
    assert_no_blocks_held(llm)


def test_a_failing_logits_processor_ends_only_its_request(tiny_models):
    llm = LLM(model=str(tiny_models["llama"]), progress=False)

    def explode_on_third(output_ids, logits):
        if len(output_ids) == 2:
            raise RuntimeError("processor bug")
        return logits

    prompts = random_prompts(49152, [10, 12, 14], seed=9)
    params = [greedy(8), greedy(8, logits_processors=[explode_on_third]), greedy(8)]
    outputs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
    assert [o.outputs[0].finish_reason for o in outputs] == ["length", "abort", "length"]
    assert len(outputs[1].outputs[0].token_ids) == 2
    assert tokens_of(outputs)[0] == tokens_of(llm.generate(prompt_token_ids=prompts[:1],
                                                           sampling_params=greedy(8)))[0]
    assert_no_blocks_held(llm)


def test_max_model_len_is_lowered_to_what_the_cache_holds_and_a_lone_sequence_ends(tiny_models, caplog):
    caplog.set_level(logging.WARNING, logger="engine.kv.sizing")
    # 16 blocks of 4 tokens per pool: one sequence can never grow past 64 tokens
    llm = LLM(model=str(tiny_models["exaone_hybrid"]), progress=False, block_size=4, kv_cache_memory=64 * 1024)
    assert llm.engine.config.max_model_len == 64
    full = str(llm.engine.model_config.max_position_embeddings)
    assert any(full in r.getMessage() and "64" in r.getMessage() for r in caplog.records)
    engine = llm.engine
    engine.add_request("long", random_prompts(49152, [20], seed=3)[0],
                       SamplingParams(max_tokens=None, ignore_eos=True, temperature=0.0))
    outputs = []
    for _ in range(200):  # a livelock would preempt and recompute forever
        outputs += engine.step()
        if not engine.has_unfinished():
            break
    assert outputs[-1].finished and outputs[-1].outputs[0].finish_reason == "length"
    assert sum(len(o.outputs[0].token_ids) for o in outputs) == 64 - 20
    assert engine.stats()["num_preemptions"] == 0
    assert_no_blocks_held(llm)


def test_what_a_request_builds_in_the_engine_fails_that_request_alone(tiny_models):
    llm = LLM(model=str(tiny_models["llama"]), progress=False)
    engine = llm.engine

    def broken_factory():
        raise RuntimeError("grammar matcher exploded")

    prompts = random_prompts(49152, [10, 12], seed=11)
    engine.add_request("ok", prompts[0], greedy(6))
    with pytest.raises(RequestRejected, match="exploded"):
        engine.add_request("bad", prompts[1], greedy(6, logits_processor_factories=[broken_factory], n=2))
    outputs = []
    while engine.has_unfinished():
        outputs += engine.step()
    assert {o.request_id for o in outputs} == {"ok"} and outputs[-1].outputs[0].finish_reason == "length"
    assert_no_blocks_held(llm)
