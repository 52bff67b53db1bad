"""Automatic prefix caching on the tiny hybrid EXAONE 4.0 (window 8 < the shared prefixes): the same greedy
tokens with caching on, off and in transformers; hit lengths; blocks all free or cached at the end."""

import pytest
from engine_checks import assert_no_blocks_held, greedy, tokens_of
from reference import hf_greedy, random_prompts

from engine import LLM, SamplingParams

BLOCK = 4
VOCAB = 49152


@pytest.fixture(scope="module")
def model_dir(tiny_models) -> str:
    return str(tiny_models["exaone_hybrid"])  # sliding window 8, "LLLG"


@pytest.fixture(scope="module")
def llms(model_dir) -> dict[bool, LLM]:
    """The same engine with caching on and off; a 32-token step budget so prompts prefill across steps."""
    return {on: LLM(model=model_dir, progress=False, block_size=BLOCK, max_num_batched_tokens=32,
                    enable_prefix_caching=on) for on in (True, False)}


def run_both(llms: dict[bool, LLM], prompts: list[list[int]], params: SamplingParams):
    """Outputs with caching on and off, from a cold cache; asserts they agree and nothing stays held."""
    llms[True].reset_prefix_cache()
    on = llms[True].generate(prompt_token_ids=prompts, sampling_params=params)
    off = llms[False].generate(prompt_token_ids=prompts, sampling_params=params)
    assert [[c.token_ids for c in o.outputs] for o in on] == [[c.token_ids for c in o.outputs] for o in off]
    assert all(o.num_cached_tokens == 0 for o in off)
    for llm in llms.values():
        assert_no_blocks_held(llm)
    return on


def test_eight_concurrent_requests_share_a_system_prompt(llms, model_dir):
    system = random_prompts(VOCAB, [30], seed=20)[0]
    prompts = [system + s for s in random_prompts(VOCAB, [3, 5, 7, 2, 9, 4, 6, 11], seed=21)]
    before = llms[True].engine.stats()
    outs = run_both(llms, prompts, greedy(12))
    assert tokens_of(outs) == [t for t, _ in hf_greedy(model_dir, prompts, 12)]
    # The first prefills 32 tokens in step 1; the other 7 then find its 7 full system blocks
    # (28 tokens, not a multiple of the window 8): global blocks 0..6, sliding blocks 5..6.
    assert [o.num_cached_tokens for o in outs] == [0] + [28] * 7
    stats = llms[True].engine.stats()
    assert stats["prefix_cache_hits"] - before["prefix_cache_hits"] == 7 * 28
    assert stats["prefix_cache_queries"] - before["prefix_cache_queries"] == sum(map(len, prompts))
    assert 0 < stats["prefix_cache_hit_rate"] < 1
    assert all(n > 0 for n in stats["kv_blocks_cached"].values())


def test_four_turn_conversation_reuses_each_turn(exaone_model):
    llms = {on: LLM(model=exaone_model, progress=False, block_size=BLOCK, enable_prefix_caching=on) for on in (True, False)}
    messages = [{"role": "system", "content": "You are a careful assistant. " * 6}]
    params = SamplingParams(max_tokens=10, temperature=0.0)
    previous: list[int] = []
    prompts, answers = [], []
    for turn in range(4):
        messages.append({"role": "user", "content": f"Question {turn}: what is {turn} plus {turn}?"})
        on, off = (llms[c].chat(messages, params, enable_thinking=False)[0] for c in (True, False))
        assert on.outputs[0].token_ids == off.outputs[0].token_ids
        prompt = on.prompt_token_ids
        # The cache holds every full block of the last turn's prompt and answer but its last token.
        common = next((i for i, (a, b) in enumerate(zip(previous, prompt, strict=False)) if a != b),
                      min(len(previous), len(prompt)))
        expected = min(common, len(prompt) - 1) // BLOCK * BLOCK
        assert on.num_cached_tokens == expected and off.num_cached_tokens == 0
        assert turn == 0 or on.num_cached_tokens > len(previous) // 2
        previous = prompt + on.outputs[0].token_ids[:-1]
        prompts.append(prompt)
        answers.append(on.outputs[0].token_ids)
        messages.append({"role": "assistant", "content": on.outputs[0].text})
    reference = [t for t, _ in hf_greedy(exaone_model, prompts, 10)]
    assert [a == r[: len(a)] for a, r in zip(answers, reference, strict=True)] == [True] * 4
    for llm in llms.values():
        assert_no_blocks_held(llm)


def test_hits_after_preemption_give_the_same_tokens(model_dir):
    system = random_prompts(VOCAB, [26], seed=22)[0]
    prompts = [system + s for s in random_prompts(VOCAB, [5, 17, 9, 12, 3, 14], seed=23)]
    expected = [t for t, _ in hf_greedy(model_dir, prompts, 30)]
    small = LLM(model=model_dir, progress=False, kv_cache_memory=96 * 1024, block_size=BLOCK,
                max_num_batched_tokens=64)
    outs = small.generate(prompt_token_ids=prompts, sampling_params=greedy(30))
    assert tokens_of(outs) == expected
    stats = small.engine.stats()
    assert stats["num_preemptions"] > 0
    # Re-admitted sequences found blocks again: more hits than their first admissions reported.
    assert stats["prefix_cache_hits"] > sum(o.num_cached_tokens for o in outs) > 0
    assert_no_blocks_held(small)


def test_two_samples_fork_a_cached_prefix(llms, model_dir):
    system = random_prompts(VOCAB, [29], seed=24)[0]
    warm, prompt = (system + s for s in random_prompts(VOCAB, [4, 6], seed=25))
    llms[True].reset_prefix_cache()
    llms[True].generate(prompt_token_ids=[warm], sampling_params=greedy(4))
    out = llms[True].generate(prompt_token_ids=[prompt], sampling_params=greedy(10, n=2))[0]
    assert out.num_cached_tokens == 28
    single = tokens_of(llms[False].generate(prompt_token_ids=[prompt], sampling_params=greedy(10)))[0]
    assert [c.token_ids for c in out.outputs] == [single, single]
    assert single == hf_greedy(model_dir, [prompt], 10)[0][0]
    assert_no_blocks_held(llms[True])


def test_prompt_logprobs_skip_the_cache_and_reset_forgets_it(llms):
    prompt = random_prompts(VOCAB, [37], seed=26)[0]
    cold = run_both(llms, [prompt], SamplingParams(max_tokens=2, temperature=0.0, prompt_logprobs=2))[0]
    warm = llms[True].generate(prompt_token_ids=[prompt], sampling_params=SamplingParams(
        max_tokens=2, temperature=0.0, prompt_logprobs=2))[0]
    assert warm.num_cached_tokens == 0
    assert [(e.token_id, e.top) for e in warm.prompt_logprobs[1:]] == [(e.token_id, e.top) for e in cold.prompt_logprobs[1:]]
    hit = llms[True].generate(prompt_token_ids=[prompt], sampling_params=greedy(2))[0]
    assert hit.num_cached_tokens == 36
    llms[True].reset_prefix_cache()
    assert llms[True].generate(prompt_token_ids=[prompt], sampling_params=greedy(2))[0].num_cached_tokens == 0


@pytest.mark.parametrize("reasoning", [True, False])
def test_next_turn_reuses_the_last_prompt_but_not_the_last_answer(exaone_model, reasoning):
    """What a chat's turn k+1 finds cached of turn k (figures in README). With reasoning on, EXAONE 4.0's
    template drops turn k's thinking, so its output is not in turn k+1's prompt; with reasoning off the
    answer is, but re-rendered: `</think>\n\n` + answer tokenizes as `\n`, `\n`, answer, where the output
    began after one `\n\n` token. Either way the hit ends just before turn k's last prompt token."""
    llm = LLM(model=exaone_model, progress=False, block_size=BLOCK)
    tokenizer = llm.tokenizer
    messages = [{"role": "system", "content": "You are a careful assistant. " * 6}]
    answer = "The answer is four, because two plus two is four."
    thinking = "Two plus two: add the units, which gives four. Check: four minus two is two.\n</think>\n\n"
    output = tokenizer.encode((thinking if reasoning else "") + answer + "[|endofturn|]", add_special_tokens=False)
    shares, last_prompt = [], 0
    for turn in range(4):
        messages.append({"role": "user", "content": f"Question {turn}: what is two plus two?"})
        prompt = tokenizer.apply_chat_template(messages, enable_thinking=reasoning)
        # Serve the turn: its prompt and (as if the model wrote them) its output tokens get cached.
        hit = llm.generate(prompt_token_ids=[prompt + output[:-1]], sampling_params=greedy(1))[0].num_cached_tokens
        if turn:
            assert hit == (last_prompt - 1) // BLOCK * BLOCK
            shares.append(hit / len(prompt))
        last_prompt = len(prompt)
        messages.append({"role": "assistant", "content": answer})
    print(f"reasoning={reasoning}: cached share of turns 2..4: {[f'{s:.0%}' for s in shares]}")
