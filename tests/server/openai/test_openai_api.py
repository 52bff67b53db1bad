"""The official openai SDK against a real uvicorn serving the embedded default model (real text)."""

from __future__ import annotations

import json

import httpx2
import pytest
from harness import MODEL, metrics

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
COUNTING = "1, 2, 3, 4, 5,"


def tokenize(base_url: str, **body) -> list[int]:
    response = httpx2.post(f"{base_url}/tokenize", json=body)
    assert response.status_code == 200, response.text
    return response.json()["tokens"]


def test_chat_answers_with_usage_equal_to_token_counts(client, base_url):
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=16, temperature=0,
                                       logprobs=True)
    choice = r.choices[0]
    assert r.object == "chat.completion" and r.model == MODEL and r.id.startswith("chatcmpl-")
    assert choice.index == 0 and choice.message.role == "assistant"
    assert "Paris" in choice.message.content
    assert r.usage.prompt_tokens == len(tokenize(base_url, messages=QUESTION))
    assert r.usage.completion_tokens == len(choice.logprobs.content)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    if choice.finish_reason == "length":
        assert r.usage.completion_tokens == 16
    else:
        assert choice.finish_reason == "stop"


def test_chat_stream_is_role_deltas_finish_usage(client):
    kwargs = {"model": MODEL, "messages": QUESTION, "max_tokens": 12, "temperature": 0}
    full = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    first, last = chunks[0], chunks[-1]
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    assert all(c.object == "chat.completion.chunk" and c.id == first.id for c in chunks)
    body = chunks[1:-1]
    assert "".join(c.choices[0].delta.content or "" for c in body) == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in body if c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert body[-1].choices[0].finish_reason is not None  # the finish chunk closes the choice
    # the second request's prompt is cached, so only prompt_tokens_details may differ
    assert last.choices == [] and last.usage.model_dump(exclude={"prompt_tokens_details"}) == \
        full.usage.model_dump(exclude={"prompt_tokens_details"})
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_wire_format_ends_with_done(base_url):
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 4, "temperature": 0, "stream": True}
    with httpx2.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    events = [e for e in text.split("\n\n") if e.strip()]
    assert all(e.startswith("data: ") for e in events), events
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert payloads[-1]["choices"][0]["delta"] == {} and payloads[-1]["choices"][0]["finish_reason"]
    assert all("usage" not in p for p in payloads)  # only with stream_options.include_usage


def test_completions_accept_text_token_ids_lists_and_echo(client, base_url):
    kwargs = {"model": MODEL, "max_tokens": 6, "temperature": 0}
    one = client.completions.create(prompt=COUNTING, **kwargs)
    ids = tokenize(base_url, prompt=COUNTING)
    assert one.object == "text_completion" and one.id.startswith("cmpl-")
    assert one.usage.prompt_tokens == len(ids)
    assert one.choices[0].finish_reason == "length" and one.usage.completion_tokens == 6
    text = one.choices[0].text
    assert client.completions.create(prompt=ids, **kwargs).choices[0].text == text
    other = "The capital of France is"
    two = client.completions.create(prompt=[COUNTING, other], **kwargs)
    assert [c.index for c in two.choices] == [0, 1]
    assert two.choices[0].text == text
    assert two.usage.prompt_tokens == len(ids) + len(tokenize(base_url, prompt=other))
    assert two.usage.completion_tokens == 12
    nested = client.completions.create(prompt=[ids, tokenize(base_url, prompt=other)], **kwargs)
    assert [c.text for c in nested.choices] == [c.text for c in two.choices]
    echoed = client.completions.create(prompt=COUNTING, echo=True, **kwargs)
    assert echoed.choices[0].text == COUNTING + text


def test_completions_stream_matches_and_reports_usage(client):
    kwargs = {"model": MODEL, "prompt": COUNTING, "max_tokens": 6, "temperature": 0}
    full = client.completions.create(**kwargs)
    chunks = list(client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks[:-1]) == full.choices[0].text
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage == full.usage


def test_completion_logprobs_have_the_legacy_shape(client):
    r = client.completions.create(model=MODEL, prompt=COUNTING, max_tokens=5, temperature=0, logprobs=3)
    choice = r.choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 5
    assert "".join(lp.tokens) == choice.text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(5)]
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert logprob <= 0 and 3 <= len(top) <= 4 and top[token] == logprob
        assert logprob == pytest.approx(max(top.values()))  # greedy picks the most likely token


def test_chat_logprobs_and_top_logprobs(client):
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=6, temperature=0,
                                       logprobs=True, top_logprobs=3)
    entries = r.choices[0].logprobs.content
    assert len(entries) == r.usage.completion_tokens
    for e in entries:
        assert len(e.top_logprobs) == 3 and e.bytes == list(e.token.encode())
        assert e.token == e.top_logprobs[0].token and e.logprob == pytest.approx(e.top_logprobs[0].logprob)
        assert e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob >= e.top_logprobs[2].logprob
    assert "".join(e.token for e in entries) == r.choices[0].message.content
    assert client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=2).choices[0].logprobs is None


def test_n2_gives_two_choices_streamed_by_index(client):
    kwargs = {"model": MODEL, "messages": QUESTION, "max_tokens": 8, "temperature": 1.0, "seed": 11, "n": 2}
    full = client.chat.completions.create(**kwargs, logprobs=True)
    assert [c.index for c in full.choices] == [0, 1]
    assert full.usage.completion_tokens == sum(len(c.logprobs.content) for c in full.choices)
    texts: dict[int, str] = {0: "", 1: ""}
    roles, finishes = [], []
    for chunk in client.chat.completions.create(**kwargs, stream=True):
        (choice,) = chunk.choices
        roles += [choice.index] if choice.delta.role else []
        texts[choice.index] += choice.delta.content or ""
        finishes += [choice.index] if choice.finish_reason else []
    assert sorted(roles) == [0, 1] and sorted(finishes) == [0, 1]
    assert texts == {c.index: c.message.content for c in full.choices}


def test_stop_strings_cut_the_text_streaming_or_not(client):
    kwargs = {"model": MODEL, "prompt": COUNTING, "max_tokens": 12, "temperature": 0}
    free = client.completions.create(**kwargs).choices[0].text
    stop = free.split()[2]  # e.g. "8," : a string the greedy text reaches after a few tokens
    expected = free[: free.index(stop)]
    stopped = client.completions.create(**kwargs, stop=[stop, "never-produced"]).choices[0]
    assert stopped.text == expected and stopped.finish_reason == "stop"
    streamed = list(client.completions.create(**kwargs, stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == expected
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_seed_makes_sampling_reproducible(client):
    def sample(seed: int) -> str:
        return client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=10, temperature=1.0,
                                              seed=seed).choices[0].message.content

    assert sample(1234) == sample(1234)
    assert len({sample(1), sample(2), sample(3)}) > 1


def test_models_list_and_aliases(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL, "alias"]
    assert all(m.object == "model" and m.owned_by == "exaone-serve" for m in models)
    assert models[0].model_extra["max_model_len"] == 1024
    r = client.chat.completions.create(model="alias", messages=QUESTION, max_tokens=2)
    assert r.model == MODEL


def test_tokenize_detokenize_round_trip(base_url):
    ids = tokenize(base_url, prompt=COUNTING, add_special_tokens=False)
    r = httpx2.post(f"{base_url}/detokenize", json={"tokens": ids})
    assert r.status_code == 200 and r.json() == {"prompt": COUNTING}
    info = httpx2.post(f"{base_url}/tokenize", json={"prompt": COUNTING}).json()
    assert info["count"] == len(info["tokens"]) and info["max_model_len"] == 1024


def test_tokenize_of_messages_shows_the_rendered_prompt_and_detokenize_keeps_its_special_tokens(base_url):
    info = httpx2.post(f"{base_url}/tokenize", json={"messages": QUESTION, "return_token_strs": True}).json()
    prompt = info["prompt"]  # the ChatML the template rendered, role tokens and all
    assert f"<|im_start|>user\n{QUESTION[0]['content']}<|im_end|>\n" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    assert httpx2.post(f"{base_url}/detokenize", json={"tokens": info["tokens"]}).json() == {"prompt": prompt}
    strs = info["token_strs"]  # vLLM's field: the vocabulary's spelling of each token
    assert len(strs) == info["count"] == len(info["tokens"]) and strs[-4:] == ["<|im_start|>", "ass", "istant", "Ċ"]
    plain = httpx2.post(f"{base_url}/tokenize", json={"prompt": COUNTING}).json()
    assert "prompt" not in plain and plain["token_strs"] is None  # a plain prompt is the client's own text


def test_metrics_count_requests_tokens_and_latencies(client, base_url):
    before = metrics(base_url)
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, temperature=0)
    after = metrics(base_url)

    def delta(name: str) -> float:
        return after.get((name, ()), 0.0) - before.get((name, ()), 0.0)

    assert delta("exaone:generation_tokens_total") == r.usage.completion_tokens
    assert delta("exaone:prompt_tokens_total") == r.usage.prompt_tokens
    for histogram in ("time_to_first_token_seconds", "request_queue_time_seconds", "e2e_request_latency_seconds"):
        assert delta(f"exaone:{histogram}_count") == 1, histogram
    assert after[("exaone:num_requests_running", ())] == 0


def test_echo_with_logprobs_scores_the_prompt_streaming_or_not(client, base_url):
    prompt_ids = tokenize(base_url, prompt=COUNTING)
    kwargs = dict(model=MODEL, prompt=COUNTING, max_tokens=3, temperature=0, echo=True, logprobs=2)
    whole = client.completions.create(**kwargs).choices[0]
    lp = whole.logprobs
    assert "".join(lp.tokens) == whole.text and whole.text.startswith(COUNTING)
    assert len(lp.tokens) == len(prompt_ids) + 3
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(x <= 0 for x in lp.token_logprobs[1:])
    # a counting prompt is easy to predict once it has started
    assert max(lp.token_logprobs[len(prompt_ids) - 4 : len(prompt_ids)]) > -1.0
    assert lp.text_offset == sorted(lp.text_offset)
    streamed_logprobs: list = []
    for chunk in client.completions.create(stream=True, **kwargs):
        if chunk.choices and chunk.choices[0].logprobs:
            streamed_logprobs += chunk.choices[0].logprobs.token_logprobs
    assert streamed_logprobs == lp.token_logprobs


def test_echo_with_max_tokens_0_scores_the_prompt_only(client, base_url):
    prompt_ids = tokenize(base_url, prompt=COUNTING)
    kwargs = dict(model=MODEL, prompt=COUNTING, temperature=0, echo=True, logprobs=1)
    scored = client.completions.create(max_tokens=0, **kwargs)
    choice = scored.choices[0]
    assert choice.text == COUNTING and choice.finish_reason == "length"
    assert len(choice.logprobs.tokens) == len(prompt_ids) and scored.usage.completion_tokens == 0
    generated = client.completions.create(max_tokens=2, **kwargs).choices[0].logprobs
    assert choice.logprobs.token_logprobs == generated.token_logprobs[: len(prompt_ids)]
    streamed = [c.choices[0] for c in client.completions.create(max_tokens=0, stream=True, **kwargs) if c.choices]
    assert "".join(c.text for c in streamed) == COUNTING and streamed[-1].finish_reason == "length"
    assert [x for c in streamed if c.logprobs for x in c.logprobs.token_logprobs] == \
        choice.logprobs.token_logprobs
    with pytest.raises(Exception, match="max_tokens"):  # without echo there is nothing to return
        client.completions.create(model=MODEL, prompt=COUNTING, max_tokens=0)


def test_stop_strings_wait_for_min_tokens(client):
    kwargs = {"model": MODEL, "prompt": COUNTING, "max_tokens": 12, "temperature": 0, "stop": [","]}
    early = client.completions.create(**kwargs).choices[0]
    assert early.finish_reason == "stop" and "," not in early.text
    late = client.completions.create(**kwargs, extra_body={"min_tokens": 6})
    assert late.usage.completion_tokens >= 6  # the commas before the 6th token did not stop it
    assert late.choices[0].finish_reason == "stop" and late.choices[0].text.startswith(early.text + ",")
