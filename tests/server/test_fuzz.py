"""Fuzzing the API: bodies generated from /openapi.json (hypothesis-jsonschema), and a corpus of bodies that
once broke the server, against a real server on a tiny random EXAONE 4.0.

Every answer must be 200 or a 4xx in OpenAI's error shape (no 5xx, no hang past a timeout, no error event
in a stream); afterwards the server is healthy and every KV block is free.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import httpx2
import pytest
from harness import kv_blocks_used, live_server, running_engine, wait_for
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from server.app import create_app

MODEL = "exaone"
EXAMPLES = 1000
HI = [{"role": "user", "content": "Hi?"}]
ROUTES = {"/v1/chat/completions": 5, "/v1/completions": 3, "/tokenize": 1, "/detokenize": 1}  # weights
TOOL = {"type": "function", "function": {"name": "f", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": HI, "max_tokens": 4, **fields}


def _nested(depth: int) -> bytes:
    return b'{"messages": [], "chat_template_kwargs": {"a": ' + b"[" * depth + b"]" * depth + b"}}"


# The bodies of issue 8, each of which once gave a 500, killed the engine, ran a caller's template or livelocked.
CORPUS: list[tuple[str, dict[str, Any] | bytes, str]] = [
    ("/v1/chat/completions", _chat(seed=2**64), "application/json"),
    ("/v1/chat/completions", _chat(seed=-(2**63) - 1), "application/json"),
    ("/v1/chat/completions", _chat(seed=2**64 - 1, n=2), "application/json"),
    ("/v1/chat/completions", _chat(seed=2**63 - 1, n=2, temperature=1.0), "application/json"),
    ("/tokenize", {"messages": HI, "chat_template_kwargs": {"chat_template": "INJECTED {{ 7*7 }}"}},
     "application/json"),
    ("/v1/chat/completions", _chat(chat_template_kwargs={"chat_template": "{{ 'x' * 4000000000 }}"}),
     "application/json"),
    ("/v1/chat/completions", _chat(chat_template_kwargs={"documents": [1]}), "application/json"),
    ("/v1/chat/completions", _chat(max_tokens=None, ignore_eos=True, stream=True), "application/json"),
    ("/v1/chat/completions", _chat(stop=["x" * 8192], max_tokens=32, ignore_eos=True), "application/json"),
    ("/v1/chat/completions", _chat(stop=[str(i) for i in range(100)]), "application/json"),
    ("/v1/completions", {"prompt": [[1]] * 100_000, "max_tokens": 1}, "application/json"),
    ("/v1/completions", {"prompt": "hi", "n": 100_000}, "application/json"),
    ("/v1/chat/completions", _chat(tools=[TOOL] * 1000), "application/json"),
    ("/v1/chat/completions", _nested(5000), "application/json"),
    ("/v1/chat/completions", _chat(temperature=1e39), "application/json"),
    ("/v1/chat/completions", json.dumps(_chat()).encode(), "text/plain"),
    ("/v1/chat/completions", _chat(logit_bias={"1000": 100}), "application/json"),
    ("/v1/chat/completions", _chat(stream_options={"include_usage": True}), "application/json"),
    ("/v1/completions", {"prompt": "Hello there", "echo": True, "max_tokens": 0, "logprobs": 1},
     "application/json"),
    ("/v1/chat/completions", _chat(tools=[TOOL], tool_choice="required", max_tokens=3, n=2, seed=5,
                                   temperature=0.8), "application/json"),
    ("/v1/chat/completions", _chat(response_format={"type": "json_schema", "json_schema": {
        "name": "deep", "schema": json.loads('{"items": ' * 100 + "{}" + "}" * 100)}}), "application/json"),
    ("/v1/chat/completions", _chat(logprobs=True, top_logprobs=20, n=3, stream=True), "application/json"),
    ("/detokenize", {"tokens": [2**63 - 1, -1]}, "application/json"),
]


@pytest.fixture(scope="module")
def engine(exaone_model):
    with running_engine(exaone_model, max_model_len=512, max_num_seqs=8) as engine:
        yield engine


@pytest.fixture(scope="module")
def base_url(engine):
    with live_server(create_app(engine, served_model_names=[MODEL])) as url:
        yield url


def send(http: httpx2.Client, route: str, body: dict[str, Any] | bytes, content_type: str) -> int:
    """Post one body; fail unless the answer is 200 or a 4xx in OpenAI's error shape. Returns the status."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = http.post(route, content=content, headers={"content-type": content_type})
    where = f"{route} {content[:300]!r} -> {r.status_code} {r.text[:300]}"
    assert r.status_code == 200 or 400 <= r.status_code < 500, where
    if r.status_code != 200:
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], where
    elif r.headers["content-type"].startswith("text/event-stream"):
        events = [e.removeprefix("data: ") for e in r.text.split("\r\n\r\n" if "\r\n" in r.text else "\n\n") if e]
        assert events and events[-1] == "[DONE]", where
        assert not any('"error"' in e and e.startswith('{"error"') for e in events), where
    else:
        r.json()
    return r.status_code


def assert_healthy_and_free(http: httpx2.Client, base_url: str, engine) -> None:
    assert engine.error is None
    assert http.get("/health").status_code == 200
    wait_for(lambda: kv_blocks_used(base_url) == 0, timeout=30)
    r = http.post("/v1/chat/completions", json=_chat())
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("case", range(len(CORPUS)))
def test_bodies_that_once_broke_the_server(http, base_url, engine, case):
    send(http, *CORPUS[case])
    assert_healthy_and_free(http, base_url, engine)


def _token(value: Any) -> Any:
    return abs(value) % 1000 if isinstance(value, int) and not isinstance(value, bool) else value


@st.composite
def _tame(draw: st.DrawFn, route: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Most generated bodies made servable (known model, few tokens, token ids in the vocabulary), so they
    reach the engine rather than stop at validation."""
    if "max_tokens" not in body:  # generation is what costs: keep it short even in untamed bodies
        body["max_tokens"] = draw(st.integers(1, 6))
    if not draw(st.integers(0, 9)):
        return route, body
    body.pop("model", None)
    for name in ("max_tokens", "max_completion_tokens"):
        if name in body and draw(st.integers(0, 4)):
            body[name] = draw(st.integers(0, 6))
    if "n" in body:
        body["n"] = draw(st.integers(1, 3))
    if route == "/tokenize":
        body.pop(draw(st.sampled_from(["prompt", "messages"])), None)
        if "prompt" not in body:
            body["messages"] = body.get("messages") or HI
    elif route == "/v1/chat/completions" and not body["messages"]:
        body["messages"] = HI
    elif route == "/detokenize":
        body["tokens"] = [_token(t) for t in body["tokens"]]
    elif route == "/v1/completions" and isinstance(body["prompt"], list):
        body["prompt"] = [[_token(t) for t in p] or [1] if isinstance(p, list) else _token(p)
                          for p in body["prompt"]] or "hi"
    return route, body


def _bodies(openapi: dict[str, Any]) -> st.SearchStrategy[tuple[str, Any]]:
    """(route, body): mostly schema-valid bodies, some arbitrary JSON."""
    components = openapi["components"]
    per_route = []
    for route, weight in ROUTES.items():
        schema = openapi["paths"][route]["post"]["requestBody"]["content"]["application/json"]["schema"]
        valid = from_schema({**schema, "components": components})
        per_route += [valid.flatmap(lambda body, route=route: _tame(route, body))] * weight
    junk = st.tuples(st.sampled_from(list(ROUTES)), st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
        max_leaves=20))
    return st.one_of(*per_route, junk)


def test_generated_requests_never_get_a_5xx(http, base_url, engine):
    openapi = http.get("/openapi.json").json()
    for route in ROUTES:  # the published bodies are the msgspec Structs, not an empty placeholder
        schema = openapi["paths"][route]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert schema["$ref"].rsplit("/", 1)[-1] in openapi["components"]["schemas"]
    statuses: Counter[tuple[str, int]] = Counter()

    @seed(8)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(_bodies(openapi))
    def run(case: tuple[str, Any]) -> None:
        route, body = case
        statuses[route, send(http, route, body, "application/json")] += 1

    run()
    print("status mix:", dict(sorted(statuses.items())))  # the mix RESULTS.md quotes (pytest -s shows it)
    assert statuses.total() >= EXAMPLES
    for route in ROUTES:  # the generated bodies reach the engine, not only the validation
        assert statuses[route, 200] >= 10, statuses
    assert_healthy_and_free(http, base_url, engine)
