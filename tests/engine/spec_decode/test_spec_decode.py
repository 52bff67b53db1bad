"""Speculative decoding in the engine: greedy identity with it off (n-gram and draft model, torch and Triton
backends) over ring wrap-around, chunked prefill, preemption and prefix hits; no leaked block after aborts."""

import random
import shutil
from pathlib import Path

import pytest
import torch
from engine_checks import assert_no_blocks_held, greedy, tokens_of
from reference import random_prompts
from safetensors.torch import load_file, save_file

from engine import LLM, SamplingParams
from engine.spec_decode.config import SpeculativeConfig

NO_BATCH_LIMIT = 1024  # draft at any batch size, so the tests exercise drafts beside other sequences' work


def perturbed_twin(model_dir: Path, root: Path, scale: float) -> Path:
    """A copy of a checkpoint with noise on every weight: a draft whose guesses are often, not always, right."""
    out = root / f"{model_dir.name}-twin-{scale}"
    if out.exists():
        return out
    shutil.copytree(model_dir, out)
    gen = torch.Generator().manual_seed(7)
    for shard in out.glob("*.safetensors"):
        weights = load_file(shard)
        save_file({k: v + scale * v.std() * torch.randn(v.shape, generator=gen) for k, v in weights.items()},
                  shard, metadata={"format": "pt"})
    return out


def repetitive_prompts(vocab: int, lengths: list[int], seed: int) -> list[list[int]]:
    """Random prompts that repeat themselves, so prompt lookup finds matches."""
    return [p + p[: len(p) // 2] + p for p in random_prompts(vocab, lengths, seed=seed)]


def ngram(k: int = 4, **kw) -> dict:
    return {"method": "ngram", "num_speculative_tokens": k, "prompt_lookup_min": 1,
            "disable_by_batch_size": NO_BATCH_LIMIT, **kw}


def draft(model: Path, k: int = 3) -> dict:
    return {"model": str(model), "num_speculative_tokens": k, "disable_by_batch_size": NO_BATCH_LIMIT}


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory) -> tuple[Path, Path]:
    """A hybrid EXAONE (window 8) and a noisy twin of it as its draft."""
    from fixtures_models import make_tiny_model

    root = tmp_path_factory.mktemp("spec")
    model = make_tiny_model(root, "exaone_hybrid", sliding_window=8)
    return model, perturbed_twin(model, root, 0.3)


# blocks of 4 and chunks of 11 wrap the window-8 ring many times over 40 tokens; 16-token chunks split prompts
ARGS = dict(progress=False, block_size=4, max_num_batched_tokens=11)


@pytest.mark.parametrize("method", ["ngram", "draft_model"])
def test_greedy_output_is_the_same_with_speculation_on(hybrid, method):
    model, twin = hybrid
    prompts = repetitive_prompts(49152, [19, 26, 13, 5, 31], seed=2)
    off = LLM(model=str(model), **ARGS)
    expected = tokens_of(off.generate(prompt_token_ids=prompts, sampling_params=greedy(40)))
    spec = LLM(model=str(model), speculative_config=ngram() if method == "ngram" else draft(twin), **ARGS)
    assert tokens_of(spec.generate(prompt_token_ids=prompts, sampling_params=greedy(40))) == expected
    stats = spec.engine.stats()["spec_decode"]
    assert stats["num_draft_tokens"] > 0
    if method == "draft_model":  # a noisy twin: some accepted, some rejected
        assert 0 < stats["num_accepted_tokens"] < stats["num_draft_tokens"]
    # the same prompts again: prefix-cache hits, then drafting from the cached state
    again = tokens_of(spec.generate(prompt_token_ids=prompts, sampling_params=greedy(40)))
    assert again == expected and spec.engine.stats()["prefix_cache_hits"] > 0
    assert_no_blocks_held(spec)


def test_a_draft_model_that_is_the_target_accepts_everything(hybrid):
    model, _ = hybrid
    spec = LLM(model=str(model), speculative_config=draft(model, k=4), **ARGS)
    prompts = random_prompts(49152, [23, 9], seed=4)
    got = tokens_of(spec.generate(prompt_token_ids=prompts, sampling_params=greedy(30)))
    off = LLM(model=str(model), **ARGS)
    assert got == tokens_of(off.generate(prompt_token_ids=prompts, sampling_params=greedy(30)))
    stats = spec.engine.stats()["spec_decode"]
    assert stats["num_accepted_tokens"] == stats["num_draft_tokens"] > 0
    assert stats["mean_acceptance_length"] > 4.0
    assert_no_blocks_held(spec)


def test_preemption_with_drafts_recomputes_to_the_same_tokens(hybrid):
    model, twin = hybrid
    prompts = repetitive_prompts(49152, [12, 16, 9, 14, 11, 18], seed=3)
    small = dict(progress=False, kv_cache_memory=96 * 1024, block_size=4, max_num_batched_tokens=64)
    expected = tokens_of(LLM(model=str(model), **small).generate(prompt_token_ids=prompts,
                                                                   sampling_params=greedy(40)))
    spec = LLM(model=str(model), speculative_config=draft(twin), **small)
    assert tokens_of(spec.generate(prompt_token_ids=prompts, sampling_params=greedy(40))) == expected
    assert spec.engine.stats()["num_preemptions"] > 0
    assert_no_blocks_held(spec)


def test_triton_backend_under_the_interpreter_verifies_drafts_the_same(hybrid, tmp_path):
    model, _ = hybrid
    prompts = repetitive_prompts(49152, [13, 9], seed=5)
    args = dict(progress=False, block_size=4, max_num_batched_tokens=12, attention_backend="triton")
    expected = tokens_of(LLM(model=str(model), **args).generate(prompt_token_ids=prompts,
                                                                sampling_params=greedy(12)))
    # the target as its own draft accepts every draft; a slightly noisy twin rejects some
    counts = []
    for drafter in (model, perturbed_twin(model, tmp_path, 0.1)):
        spec = LLM(model=str(model), speculative_config=draft(drafter), **args)
        assert tokens_of(spec.generate(prompt_token_ids=prompts, sampling_params=greedy(12))) == expected
        stats = spec.engine.stats()["spec_decode"]
        counts.append((stats["num_accepted_tokens"], stats["num_draft_tokens"]))
        assert_no_blocks_held(spec)
    assert counts[0][0] == counts[0][1] > 0 and counts[1][0] < counts[1][1]


def test_prompt_lookup_on_the_default_model_copies_and_matches_greedy():
    text = "The quick brown fox jumps over the lazy dog near the old mill by the river bank."
    messages = [{"role": "user", "content": f"Repeat this sentence exactly, twice: {text}"}]
    params = SamplingParams(max_tokens=40, temperature=0.0)
    off = LLM(progress=False, max_model_len=512)
    spec = LLM(progress=False, max_model_len=512, speculative_config=ngram(k=4, prompt_lookup_min=2))
    assert tokens_of(spec.chat(messages, params)) == tokens_of(off.chat(messages, params))
    stats = spec.engine.stats()["spec_decode"]
    assert stats["num_accepted_tokens"] > 0 and stats["mean_acceptance_length"] > 1.5
    assert_no_blocks_held(spec)


def test_stops_max_tokens_logprobs_and_n_keep_working(hybrid):
    model, _ = hybrid
    prompts = repetitive_prompts(49152, [17, 24], seed=6)
    off = LLM(model=str(model), **ARGS)
    # the target as its own draft: every run of 4 is accepted, so stops and max_tokens land inside runs
    spec = LLM(model=str(model), speculative_config=draft(model, k=4), **ARGS)
    first = tokens_of(off.generate(prompt_token_ids=prompts, sampling_params=greedy(20)))
    stop = [first[0][7]]  # a token the first answer reaches mid-way: it ends there, drafts past it dropped
    for params in (greedy(13, logprobs=2), greedy(20, stop_token_ids=stop), greedy(9, n=2)):
        a, b = off.generate(prompt_token_ids=prompts, sampling_params=params), \
            spec.generate(prompt_token_ids=prompts, sampling_params=params)
        for x, y in zip(a, b, strict=True):
            assert [o.token_ids for o in x.outputs] == [o.token_ids for o in y.outputs]
            assert [o.finish_reason for o in x.outputs] == [o.finish_reason for o in y.outputs]
            if params.logprobs:
                lx = [lp.logprob for lp in x.outputs[0].logprobs]
                ly = [lp.logprob for lp in y.outputs[0].logprobs]
                assert ly == pytest.approx(lx, abs=1e-4)
                assert [lp.top[0][0] for lp in y.outputs[0].logprobs] == [lp.top[0][0] for lp in x.outputs[0].logprobs]
    assert spec.engine.stats()["spec_decode"]["num_accepted_tokens"] > 0
    assert_no_blocks_held(spec)


def test_aborts_mid_speculation_leak_no_block(hybrid):
    model, twin = hybrid
    rng = random.Random(11)
    for config in (draft(twin), ngram()):
        llm = LLM(model=str(model), speculative_config=config, kv_cache_memory=256 * 1024, **ARGS)
        engine = llm.engine
        prompts = repetitive_prompts(49152, [rng.randint(3, 40) for _ in range(24)], seed=12)
        live: list[str] = []
        for step in range(160):
            if prompts and rng.random() < 0.4:
                rid = f"r{step}"
                temp = rng.choice([0.0, 0.8])
                engine.add_request(rid, prompts.pop(), SamplingParams(max_tokens=rng.randint(1, 30),
                                                                      temperature=temp, seed=step))
                live.append(rid)
            if live and rng.random() < 0.15:
                engine.abort(live.pop(rng.randrange(len(live))))
            engine.step()
        for rid in live:
            engine.abort(rid)
        assert engine.stats()["spec_decode"]["num_drafts"] > 0
        assert_no_blocks_held(llm)


def test_the_config_takes_vllms_keys_and_names_what_is_wrong():
    assert SpeculativeConfig.parse('{"model": "x", "num_speculative_tokens": 2}').method == "draft_model"
    assert SpeculativeConfig.parse(None) is None
    for bad, match in (('{"method": "eagle"}', "method must be one of"), ('{"num_speculative_tokens": 0}', r"\[1, 16\]"),
                       ('{"prompt_lookup_min": 5, "prompt_lookup_max": 2}', "prompt_lookup_min"),
                       ('{"speculative_tokens": 3}', "unknown speculative config keys: speculative_tokens"),
                       ('{"method": "draft_model"}', "needs a `model`"), ("[1]", "JSON object"), ("{", "not valid JSON")):
        with pytest.raises(ValueError, match=match):
            SpeculativeConfig.parse(bad)
    assert SpeculativeConfig().batch_limit("cpu") < SpeculativeConfig().batch_limit("cuda")
