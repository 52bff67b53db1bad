"""Bad input answers 4xx in OpenAI's error shape and the server keeps serving; 503 while loading."""

from __future__ import annotations

import json
import logging
import re

import httpx2
import openai
import pytest
from harness import assert_openai_error, live_server, running_engine

from server.app import attach_engine, create_app

MODEL = "tiny"
MAX_MODEL_LEN = 64
MAX_NUM_SEQS = 4
BODY_LIMIT = 32 * 1024
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def engine(tiny_models):
    with running_engine(str(tiny_models["llama"]), max_model_len=MAX_MODEL_LEN, max_num_seqs=MAX_NUM_SEQS) as engine:
        yield engine


@pytest.fixture(scope="module")
def base_url(engine):
    app = create_app(engine, served_model_names=[MODEL], max_request_body_bytes=BODY_LIMIT)
    with live_server(app) as url:
        yield url



def chat(**overrides) -> dict:
    return {"model": MODEL, "messages": HELLO, "max_tokens": 2, **overrides}


def assert_still_serving(http: httpx2.Client) -> None:
    r = http.post("/v1/chat/completions", json=chat())
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1


CHAT_CASES = {
    "wrong type: messages": ({"model": MODEL, "messages": "hello"}, 400, "messages"),
    "wrong type: temperature": (chat(temperature="hot"), 400, "temperature"),
    "wrong type: n": (chat(n=1.5), 400, "n"),
    "missing messages": ({"model": MODEL}, 400, "messages"),
    "empty messages": (chat(messages=[]), 400, "messages"),
    "unknown role": (chat(messages=[{"role": "wizard", "content": "hi"}]), 400, "messages[0].role"),
    "image content part": (chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), 400,
                           "messages[0].content[0]"),
    "unknown model": (chat(model="gpt-17"), 404, "model"),
    "max_tokens 0": (chat(max_tokens=0), 400, "max_tokens"),
    "max_tokens negative": (chat(max_tokens=-3), 400, "max_tokens"),
    "max_completion_tokens 0": (chat(max_completion_tokens=0), 400, "max_completion_tokens"),
    "temperature < 0": (chat(temperature=-0.5), 400, "temperature"),
    "top_p 0": (chat(top_p=0.0), 400, "top_p"),
    "top_p > 1": (chat(top_p=1.5), 400, "top_p"),
    "n over the limit": (chat(n=MAX_NUM_SEQS + 1), 400, "n"),
    "n 0": (chat(n=0), 400, "n"),
    "top_logprobs without logprobs": (chat(top_logprobs=2), 400, "top_logprobs"),
    "top_logprobs over 20": (chat(logprobs=True, top_logprobs=21), 400, "top_logprobs"),
    "reserved template kwarg": (chat(chat_template_kwargs={"tools": []}), 400, "chat_template_kwargs.tools"),
}


@pytest.mark.parametrize("case", CHAT_CASES)
def test_bad_chat_requests_get_openai_errors(http, case):
    body, status, param = CHAT_CASES[case]
    error = assert_openai_error(http.post("/v1/chat/completions", json=body), status, param)
    if status == 404:
        assert error["code"] == "model_not_found" and MODEL in error["message"]
    assert_still_serving(http)


COMPLETION_CASES = {
    "mixed prompt list": ({"model": MODEL, "prompt": ["a", 1]}, "prompt"),
    "empty prompt list": ({"model": MODEL, "prompt": []}, "prompt"),
    "logprobs over 20": ({"model": MODEL, "prompt": "a", "logprobs": 21}, "logprobs"),
    "token id outside the vocabulary": ({"model": MODEL, "prompt": [10**9]}, None),
}


@pytest.mark.parametrize("case", COMPLETION_CASES)
def test_bad_completion_requests_get_openai_errors(http, case):
    body, param = COMPLETION_CASES[case]
    assert_openai_error(http.post("/v1/completions", json=body), 400, param)
    assert_still_serving(http)


def test_malformed_json(http):
    r = http.post("/v1/chat/completions", content=b'{"model": "tiny", "messages": [',
                  headers={"content-type": "application/json"})
    assert "JSON" in assert_openai_error(r, 400)["message"]
    assert_still_serving(http)


def test_prompt_longer_than_max_model_len_names_both_numbers(http):
    messages = [{"role": "user", "content": "hello " * 100}]
    count = http.post("/tokenize", json={"messages": messages}).json()["count"]
    assert count > MAX_MODEL_LEN
    error = assert_openai_error(http.post("/v1/chat/completions", json=chat(messages=messages, max_tokens=None)), 400)
    numbers = set(re.findall(r"\d+", error["message"]))
    assert {str(count), str(MAX_MODEL_LEN)} <= numbers, error["message"]
    error = assert_openai_error(http.post("/v1/completions", json={"prompt": "hi " * 100, "max_tokens": 4}), 400)
    assert str(MAX_MODEL_LEN) in error["message"]
    assert_still_serving(http)


def test_body_over_the_limit_is_413(http):
    big = chat(messages=[{"role": "user", "content": "x" * (BODY_LIMIT + 1)}])
    error = assert_openai_error(http.post("/v1/chat/completions", json=big), 413)
    assert str(BODY_LIMIT) in error["message"]

    def chunked():  # no Content-Length: the limit holds on the bytes actually read
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(BODY_LIMIT // 1024 + 1):
            yield b"x" * 1024
        yield b'"}]}'

    assert_openai_error(http.post("/v1/chat/completions", content=chunked(),
                                  headers={"content-type": "application/json"}), 413)
    assert_still_serving(http)


def test_unknown_routes_and_methods_use_the_error_shape(http):
    assert_openai_error(http.get("/v1/nothing-here"), 404)
    assert_openai_error(http.get("/v1/chat/completions"), 405)


def test_unknown_fields_are_ignored_and_logged_once(http, caplog):
    caplog.set_level(logging.DEBUG, logger="server.openai.serving")
    for _ in range(2):
        r = http.post("/v1/chat/completions", json=chat(frobnicate=True, logit_bias={"1": 2}))
        assert r.status_code == 200, r.text
    logged = [rec.getMessage() for rec in caplog.records if "frobnicate" in rec.getMessage()]
    assert len(logged) == 1


def test_sdk_raises_typed_errors(base_url):
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=HELLO)
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=HELLO, temperature=-1)
    assert info.value.param == "temperature"


def test_health_is_503_until_the_engine_is_attached(engine):
    app = create_app(None, served_model_names=[MODEL])
    with live_server(app) as url, httpx2.Client(base_url=url, timeout=30) as http:
        r = http.get("/health")
        assert assert_openai_error(r, 503)["code"] == "model_loading"
        assert r.headers["retry-after"]
        assert_openai_error(http.post("/v1/chat/completions", json=chat()), 503)
        assert http.get("/metrics").status_code == 200
        attach_engine(app, engine)
        assert http.get("/health").status_code == 200
        assert http.get("/v1/models").json()["data"][0]["id"] == MODEL
        assert_still_serving(http)


def test_engine_crash_ends_streams_with_an_error_then_answers_500(tiny_models):
    def crash() -> list:
        raise RuntimeError("kernel exploded")

    with running_engine(str(tiny_models["llama"]), max_model_len=MAX_MODEL_LEN) as engine:
        engine.engine.step = crash  # the step loop dies on the first request
        with live_server(create_app(engine, served_model_names=[MODEL])) as url, \
                httpx2.Client(base_url=url, timeout=30) as http:
            r = http.post("/v1/chat/completions", json=chat(stream=True))
            assert r.status_code == 200  # the stream had started when the engine died
            events = [e.removeprefix("data: ") for e in r.text.split("\n\n") if e]
            assert events[-1] == "[DONE]"
            error = json.loads(events[-2])["error"]
            assert error["code"] == "engine_dead" and "kernel exploded" in error["message"]
            assert_openai_error(http.get("/health"), 500)
            error = assert_openai_error(http.post("/v1/completions", json={"prompt": "hi"}), 500)
            assert error["code"] == "engine_dead"
