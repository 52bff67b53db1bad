"""No request can hurt another (issue 8): each hole found by hand, closed, through a real server."""

from __future__ import annotations

import json
import threading
import time

import httpx2
import pytest
from harness import assert_openai_error, kv_blocks_used, live_server, running_engine, wait_for

from server.app import create_app
from server.limits import RequestLimits

MODEL = "exaone"
HI = [{"role": "user", "content": "Hi?"}]
LIMITS = RequestLimits(max_n=3, max_stop_sequences=4, max_prompts=8, max_tools=4, max_schema_bytes=4096)
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}


@pytest.fixture(scope="module")
def engine(exaone_model):
    with running_engine(exaone_model, max_model_len=256, max_num_seqs=8) as engine:
        yield engine


@pytest.fixture(scope="module")
def base_url(engine):
    with live_server(create_app(engine, served_model_names=[MODEL], limits=LIMITS)) as url:
        yield url


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def chat(**fields) -> dict:
    return {"model": MODEL, "messages": HI, "max_tokens": 3, **fields}


def assert_healthy(http: httpx2.Client) -> None:
    """/health is 200, a plain request is served, and no KV block is left behind."""
    assert http.get("/health").status_code == 200
    r = http.post("/v1/chat/completions", json=chat())
    assert r.status_code == 200, r.text
    wait_for(lambda: kv_blocks_used(str(http.base_url).rstrip("/")) == 0, timeout=10)


# ---- 1. a request's seed (or whatever it builds in the engine) fails that request alone ----------

@pytest.mark.parametrize("fields", [{"seed": 2**64}, {"seed": -(2**63) - 1}, {"seed": 2**64 - 1, "n": 2}])
def test_seed_outside_int64_is_400_and_the_engine_lives(http, fields):
    assert_openai_error(http.post("/v1/chat/completions", json=chat(**fields)), 400, "seed")
    assert_healthy(http)


def test_seeds_at_the_int64_edges_are_served_with_n(http):
    for seed in (2**63 - 1, -(2**63)):
        r = http.post("/v1/chat/completions", json=chat(seed=seed, n=3, temperature=1.0))
        assert r.status_code == 200, r.text
        assert len(r.json()["choices"]) == 3
    assert_healthy(http)


# ---- 2. templates come only from the model or the operator ---------------------------------------

@pytest.mark.parametrize("key", ["chat_template", "conversation", "tools", "documents", "messages",
                                 "add_generation_prompt", "continue_final_message"])
def test_reserved_template_kwargs_are_refused_by_name(http, key):
    value = "INJECTED {{ 7*7 }}" if key == "chat_template" else [1]
    for route, body in (("/tokenize", {"messages": HI}), ("/v1/chat/completions", chat())):
        error = assert_openai_error(http.post(route, json={**body, "chat_template_kwargs": {key: value}}), 400,
                                    f"chat_template_kwargs.{key}")
        assert key in error["message"]
    tokens = http.post("/tokenize", json={"messages": HI, "chat_template_kwargs": {"style": "{{ 7*7 }}"}}).json()
    assert "49" not in http.post("/detokenize", json={"tokens": tokens["tokens"]}).json()["prompt"]
    assert_healthy(http)


@pytest.fixture(scope="module")
def operator_engine(tiny_models):
    """An engine whose operator template (as --chat-template sets it) divides by a request's kwarg."""
    with running_engine(str(tiny_models["llama"]), max_model_len=64) as engine:
        engine.tokenizer.hf.chat_template = (
            "{% for m in messages %}{{ m.content }}{% endfor %}{{ 100 // divisor if divisor is defined else '' }}"
            "{% if slow is defined %}{% for i in range(100000) %}{% for j in range(slow) %}{% endfor %}{% endfor %}"
            "{% endif %}")
        yield engine


def test_operator_template_is_used_and_its_errors_are_400(operator_engine):
    app = create_app(operator_engine, served_model_names=[MODEL])
    with live_server(app) as url, httpx2.Client(base_url=url, timeout=60) as http:
        tokens = http.post("/tokenize", json={"messages": HI, "chat_template_kwargs": {"divisor": 4}}).json()
        assert http.post("/detokenize", json={"tokens": tokens["tokens"]}).json()["prompt"] == "Hi?25"
        error = assert_openai_error(http.post("/v1/chat/completions", json=chat(
            chat_template_kwargs={"divisor": 0})), 400)
        assert "ZeroDivisionError" in error["message"]
        assert http.get("/health").status_code == 200


def slow_chat(http: httpx2.Client, answers: list[httpx2.Response], slow: int) -> threading.Thread:
    """A chat whose rendering takes ~0.2 s + 2.5 ms x `slow` here (the operator template's loop), from a thread."""
    thread = threading.Thread(target=lambda: answers.append(http.post("/v1/chat/completions", json=chat(
        chat_template_kwargs={"slow": slow}))))
    thread.start()
    return thread


def test_slow_rendering_runs_off_the_event_loop(operator_engine):
    app = create_app(operator_engine, served_model_names=[MODEL], limits=RequestLimits(preprocess_timeout=60))
    with live_server(app) as url, httpx2.Client(base_url=url, timeout=120) as http:
        answers: list[httpx2.Response] = []
        slow = slow_chat(http, answers, 1000)  # ~3 s
        time.sleep(0.2)  # the template is rendering now
        health = [http.get("/health").status_code for _ in range(5)]  # answered while the template renders
        assert health == [200] * 5 and not answers
        slow.join()
        assert answers[0].status_code == 200, answers[0].text


def test_rendering_past_the_preprocess_timeout_is_400(operator_engine):
    limits = RequestLimits(preprocess_timeout=0.2, preprocess_workers=1)
    app = create_app(operator_engine, served_model_names=[MODEL], limits=limits)
    with live_server(app) as url, httpx2.Client(base_url=url, timeout=120) as http:
        answers: list[httpx2.Response] = []
        slow_chat(http, answers, 400).join()  # ~1.2 s, of which ~1 s renders on after the 400
        error = assert_openai_error(answers[0], 400)
        assert "--preprocess-timeout" in error["message"]


# ---- 4. bounded work per request ----------------------------------------------------------------

LIMIT_CASES = {
    "five stop strings": ("/v1/chat/completions", chat(stop=["a", "b", "c", "d", "e"]), "stop"),
    "n past --max-n": ("/v1/chat/completions", chat(n=4), "n"),
    "prompts past --max-prompts-per-request": ("/v1/completions", {"prompt": ["a"] * 9}, "prompt"),
    "token-id prompts past the bound": ("/v1/completions", {"prompt": [[1]] * 9}, "prompt"),
    "tools past --max-tools": ("/v1/chat/completions", chat(tools=[TOOL] * 5), "tools"),
    "schema past --max-schema-bytes": ("/v1/chat/completions", chat(response_format={
        "type": "json_schema", "json_schema": {"name": "big", "schema": {
            "type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(200)}}}}),
        "response_format"),
    "schema nested too deeply": ("/v1/chat/completions", chat(tools=[{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "x": nested(100)}}}]), "tools"),
    "template kwargs nested too deeply": ("/v1/chat/completions", chat(chat_template_kwargs={"x": nested(100)}),
                                          "chat_template_kwargs"),
    "tokenize: template kwargs nested too deeply": ("/tokenize", {"messages": HI, "chat_template_kwargs": {
        "x": nested(100)}}, "chat_template_kwargs"),
    "tokenize: tool-call arguments nested too deeply": ("/tokenize", {"messages": [*HI, {
        "role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
            "name": "f", "arguments": {"x": nested(100)}}}]}]}, "messages"),
    "top_logprobs over 20": ("/v1/chat/completions", chat(logprobs=True, top_logprobs=21), "top_logprobs"),
    "stop token id outside the vocabulary": ("/v1/chat/completions", chat(stop_token_ids=[2**40]),
                                             "stop_token_ids"),
}


@pytest.mark.parametrize("case", LIMIT_CASES)
def test_limits_are_400_naming_the_field_and_flag(http, case):
    route, body, param = LIMIT_CASES[case]
    assert_openai_error(http.post(route, json=body), 400, param)
    assert_healthy(http)


def test_four_long_stop_strings_are_served(http):
    stops = ["x" * 2000 + str(i) for i in range(4)]
    r = http.post("/v1/chat/completions", json=chat(stop=stops, max_tokens=16, ignore_eos=True))
    assert r.status_code == 200, r.text


# ---- 6, 7. wire hygiene ---------------------------------------------------------------------------

@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_post_bodies_must_be_json(http, content_type):
    headers = {"content-type": content_type} if content_type else {}
    for route in ("/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize"):
        r = http.post(route, content=b'{"prompt": "hi", "messages": [], "tokens": [1]}', headers=headers)
        assert assert_openai_error(r, 415)["code"] == "unsupported_media_type"
    r = http.post("/v1/chat/completions", content=json.dumps(chat()).encode(),
                  headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200, r.text


def test_json_nested_5000_deep_is_400(http):
    deep = b'{"model": "exaone", "messages": [], "chat_template_kwargs": {"a": ' + b"[" * 5000 + b"]" * 5000 + b"}}"
    error = assert_openai_error(http.post("/v1/chat/completions", content=deep,
                                          headers={"content-type": "application/json"}), 400)
    assert "deep" in error["message"]
    assert_healthy(http)


@pytest.mark.parametrize(("field", "value"), [("temperature", 1e39), ("temperature", 2.5), ("top_p", 1e39),
                                              ("presence_penalty", -3.0), ("repetition_penalty", 1e39),
                                              ("min_p", 2.0), ("max_tokens", 2**64), ("top_k", -2)])
def test_sampling_numbers_out_of_range_are_400(http, field, value):
    assert_openai_error(http.post("/v1/chat/completions", json=chat(**{field: value})), 400, field)


def test_models_root_shows_no_local_path(http, engine):
    card = http.get("/v1/models").json()["data"][0]
    assert card["root"] == MODEL
    assert str(engine.engine.model_path) not in http.get("/v1/models").text


# ---- 8. wire details ---------------------------------------------------------------------------

def test_stream_options_without_stream_is_400(http):
    assert_openai_error(http.post("/v1/chat/completions", json=chat(stream_options={"include_usage": True})), 400,
                        "stream_options")
    assert_openai_error(http.post("/v1/completions", json={"prompt": "hi", "stream_options": {}}), 400,
                        "stream_options")


@pytest.mark.parametrize("bias", [{"x": 1}, {"-1": 1}, {"99999999": 1}, {"5": 101}, {"5": -100.5}])
def test_bad_logit_bias_is_400(http, bias):
    assert_openai_error(http.post("/v1/chat/completions", json=chat(logit_bias=bias)), 400, "logit_bias")


def test_logit_bias_changes_the_output(http):
    body = {"prompt": "Hello", "max_tokens": 4, "temperature": 0, "ignore_eos": True}
    free = http.post("/v1/completions", json=body).json()["choices"][0]["text"]
    forced = http.post("/v1/completions", json={**body, "logit_bias": {"1000": 100}}).json()["choices"][0]["text"]
    assert forced == http.post("/detokenize", json={"tokens": [1000] * 4}).json()["prompt"] != free
    # biases are numbers added to the logits: the larger one wins
    both = http.post("/v1/completions", json={**body, "logit_bias": {"1000": 99, "1001": 100}}).json()
    assert both["choices"][0]["text"] == http.post("/detokenize", json={"tokens": [1001] * 4}).json()["prompt"]
