"""Mode switching through HTTP on a tiny random EXAONE 4.0: the switch, budgets, answer reserve and deadline,
defaults, tool turns, bad input."""

from __future__ import annotations

import io

import httpx2
import pytest
from harness import assert_openai_error, live_server, metric, running_engine
from openai import OpenAI

from clients.chat import ChatSession
from engine.modes.reasoning import EFFORT, END_SEQUENCE
from server.app import create_app

MODEL = "exaone"
ON, OFF = "[|assistant|]\n<think>\n", "[|assistant|]\n<think>\n\n</think>\n\n"
HI = [{"role": "user", "content": "Hi?"}]
SERVER_CAP = 4  # --max-thinking-tokens of the second app
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]


@pytest.fixture(scope="module")
def engine(exaone_model):
    with running_engine(exaone_model, max_model_len=512) as engine:
        yield engine


@pytest.fixture(scope="module")
def base_url(engine):
    with live_server(create_app(engine, served_model_names=[MODEL])) as url:
        yield url


@pytest.fixture(scope="module")
def thinking_url(engine):
    """A second app on the same engine: reasoning on by default, thinking capped by the server."""
    app = create_app(engine, served_model_names=[MODEL], default_chat_template_kwargs={"enable_thinking": True},
                     max_thinking_tokens=SERVER_CAP)
    with live_server(app) as url:
        yield url



def prompt_text(engine, url: str, **fields) -> str:
    r = httpx2.post(f"{url}/tokenize", json={"model": MODEL, "messages": HI, **fields})
    assert r.status_code == 200, r.text
    return engine.tokenizer.decode(r.json()["tokens"], skip_special_tokens=False)


WAYS = [  # (request fields, reasoning on?)
    ({}, False),
    ({"reasoning": True}, True),
    ({"reasoning": False}, False),
    ({"chat_template_kwargs": {"enable_thinking": True}}, True),
    ({"chat_template_kwargs": {"enable_thinking": False}}, False),
    ({"reasoning_effort": "none"}, False),
    ({"reasoning_effort": "low"}, True),
    ({"reasoning_effort": "high"}, True),
]


@pytest.mark.parametrize(("fields", "on"), WAYS)
def test_every_way_of_asking_renders_the_generation_prompt(engine, base_url, fields, on):
    assert prompt_text(engine, base_url, **fields).endswith(ON if on else OFF)


def test_server_default_turns_reasoning_on_and_requests_still_switch_it_off(engine, thinking_url):
    assert prompt_text(engine, thinking_url).endswith(ON)
    assert prompt_text(engine, thinking_url, reasoning=False).endswith(OFF)


def test_chat_renders_the_prompt_tokenize_shows(client, engine, base_url):
    for fields, _ in WAYS[:2]:
        r = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1, extra_body=fields)
        expected = httpx2.post(f"{base_url}/tokenize", json={"messages": HI, **fields}).json()["count"]
        assert r.usage.prompt_tokens == expected


def forced_length(engine) -> int:
    return len(engine.tokenizer.encode(END_SEQUENCE, add_special_tokens=False))


@pytest.mark.parametrize("budget", [0, 1, 8, 64])
def test_budget_caps_thinking_and_an_answer_follows_streamed_or_not(client, engine, budget):
    kwargs = {"model": MODEL, "messages": HI, "max_tokens": budget + forced_length(engine) + 12,
              "temperature": 1.0, "seed": 7, "extra_body": {"reasoning": True, "thinking_token_budget": budget}}
    full = client.chat.completions.create(**kwargs, logprobs=True)
    message, usage = full.choices[0].message, full.usage
    raw = "".join(e.token for e in full.choices[0].logprobs.content)
    assert END_SEQUENCE in raw  # the forced end is in the output itself
    thinking = usage.completion_tokens_details.reasoning_tokens
    assert 0 < thinking <= budget + forced_length(engine)
    assert message.content and message.reasoning_content == message.reasoning == raw.split("</think>")[0]
    for text in (message.content, message.reasoning_content):
        assert "<think>" not in text and "</think>" not in text

    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == message.reasoning_content
    assert "".join(getattr(d, "reasoning", None) or "" for d in deltas) == message.reasoning_content
    assert "".join(d.content or "" for d in deltas) == message.content
    assert chunks[-1].usage == usage


def test_server_cap_limits_a_larger_request_budget(engine, thinking_url):
    client = OpenAI(base_url=f"{thinking_url}/v1", api_key="unused", max_retries=0)
    r = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=24, seed=1,
                                       extra_body={"thinking_budget": 50})
    assert 0 < r.usage.completion_tokens_details.reasoning_tokens <= SERVER_CAP + forced_length(engine)
    assert r.choices[0].message.content


def test_effort_brings_its_default_budget(client, engine):
    budget = EFFORT["minimal"][1]
    # (no answer reserve: max_tokens leaves the whole budget to thinking)
    r = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=budget + forced_length(engine) + 8,
                                       seed=2, reasoning_effort="minimal", extra_body={"reasoning_answer_reserve": 0})
    assert budget <= r.usage.completion_tokens_details.reasoning_tokens <= budget + forced_length(engine)
    assert r.choices[0].message.content


def test_mode_defaults_fill_only_unset_sampling_fields(client):
    def answer(**fields) -> str:
        r = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=16, seed=5, **fields)
        return (r.choices[0].message.content or "") + (getattr(r.choices[0].message, "reasoning", None) or "")

    # non-reasoning: temperature 0.3 unless given
    assert answer() == answer(temperature=0.3) != answer(temperature=1.0)
    reasoning = {"extra_body": {"reasoning": True}}
    explicit = {"temperature": 0.6, "top_p": 0.95, "presence_penalty": 1.5}
    assert answer(**reasoning) == answer(**reasoning, **explicit) != answer(**reasoning, temperature=1.0)


def test_tool_turns_round_trip_through_the_template(engine, base_url):
    messages = [
        {"role": "user", "content": "Weather in Seoul?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Seoul"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "22C"}]},
    ]
    r = httpx2.post(f"{base_url}/tokenize", json={"messages": messages, "tools": TOOLS})
    text = engine.tokenizer.decode(r.json()["tokens"], skip_special_tokens=False)
    assert text.startswith('[|system|]\n# Available Tools') and '<tool>{"type": "function", "function": ' in text
    assert ('[|assistant|]\n<think>\n\n</think>\n\n<tool_call>{"name": "get_weather", "arguments": {"city": "Seoul"}}'
            '</tool_call>[|endofturn|]\n[|tool|]\n<tool_result>{"result": "22C"}</tool_result>[|endofturn|]\n') in text
    assert text.endswith(OFF)
    none = httpx2.post(f"{base_url}/tokenize", json={"messages": HI, "tools": TOOLS, "tool_choice": "none"})
    assert "get_weather" not in engine.tokenizer.decode(none.json()["tokens"])  # "none" offers no tools


def chat(**fields) -> dict:
    return {"model": MODEL, "messages": HI, "max_tokens": 2, **fields}


BAD = {
    "invalid tool schema": (chat(tools=[{"type": "function", "function": {
        "name": "f", "parameters": {"type": "objekt"}}}]), "tools[0].function.parameters"),
    "tool name not a string": (chat(tools=[{"type": "function", "function": {"name": 3}}]), "tools[0].function.name"),
    "named choice not in tools": (chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}),
                                  "tool_choice"),
    "required without tools": (chat(tool_choice="required"), "tool_choice"),
    "named choice without tools": (chat(tool_choice={"type": "function", "function": {"name": "get_weather"}}),
                                   "tool_choice"),
    "unknown tool_choice": (chat(tools=TOOLS, tool_choice="sometimes"), "tool_choice"),
    "negative budget": (chat(reasoning=True, thinking_token_budget=-1), "thinking_token_budget"),
    "negative budget alias": (chat(thinking_budget=-5), "thinking_budget"),
    "invalid response schema": (chat(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": 5}}}), "response_format.json_schema.schema"),
    "unknown response_format": (chat(response_format={"type": "yaml"}), "response_format.type"),
    "unknown effort": (chat(reasoning_effort="extreme"), "reasoning_effort"),
    "enable_thinking not a bool": (chat(chat_template_kwargs={"enable_thinking": "on"}),
                                   "chat_template_kwargs.enable_thinking"),
    "tool call without function": (chat(messages=[*HI, {"role": "assistant", "tool_calls": [{"id": "a"}]}]),
                                   "messages[1].tool_calls[0].function"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_mode_fields_are_400_naming_the_field(http, case):
    body, param = BAD[case]
    assert_openai_error(http.post("/v1/chat/completions", json=body), 400, param)
    assert http.post("/v1/chat/completions", json=chat()).status_code == 200


def test_chat_client_shows_reasoning_and_keeps_only_answers(client):
    out = io.StringIO()
    session = ChatSession(client, MODEL, max_tokens=24, reasoning=True, budget=3, out=out)  # 16 kept for the answer
    answer = session.send("Hi?")
    assert answer and out.getvalue().rstrip("\n").endswith(answer)
    assert len(out.getvalue()) > len(answer) + 1  # the reasoning came first
    assert session.history[-1] == {"role": "assistant", "content": answer}


# ---- answer reserve and thinking deadline (the tiny random model never closes its thinking itself) ----

def reasoning_chat(client: OpenAI, **fields):
    kwargs = {"model": MODEL, "messages": HI, "temperature": 1.0, "seed": 5, "logprobs": True}
    extra = {"reasoning": True, **fields.pop("extra", {})}
    return client.chat.completions.create(**kwargs, **fields, extra_body=extra)


def tokens(response) -> list[str]:
    return [e.token for e in response.choices[0].logprobs.content]


def test_small_max_tokens_still_gets_an_answer_streamed_or_not(client, base_url):
    before = metric(base_url, "exaone:reasoning_cuts_total", reason="answer_reserve")
    whole = reasoning_chat(client, max_tokens=24)
    message = whole.choices[0].message
    assert message.content and message.reasoning_cut == "answer_reserve"
    # 24 tokens: at least 16 kept for the answer, so thinking plus the forced `</think>\n\n` took at most 8
    assert whole.usage.completion_tokens_details.reasoning_tokens <= 8
    chunks = list(reasoning_chat(client, max_tokens=24, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == message.content
    assert [d.reasoning_cut for d in deltas if getattr(d, "reasoning_cut", None)] == ["answer_reserve"]
    assert metric(base_url, "exaone:reasoning_cuts_total", reason="answer_reserve") - before == 2
    # The request may turn the reserve off: then nothing cuts the thinking (the tiny model never ends it).
    free = reasoning_chat(client, max_tokens=24, extra={"reasoning_answer_reserve": 0})
    assert free.choices[0].message.content in (None, "") and free.choices[0].finish_reason == "length"
    assert getattr(free.choices[0].message, "reasoning_cut", None) is None


def test_deadline_zero_is_budget_zero_and_a_deadline_cuts_long_thinking(client, base_url):
    budget = reasoning_chat(client, max_tokens=40, extra={"thinking_token_budget": 0})
    deadline = reasoning_chat(client, max_tokens=40, extra={"thinking_deadline_ms": 0})
    assert tokens(deadline) == tokens(budget)
    assert [r.choices[0].message.reasoning_cut for r in (budget, deadline)] == ["budget", "deadline"]
    before = metric(base_url, "exaone:reasoning_cuts_total", reason="deadline")
    # (how much thinking fits in 150 ms depends on the machine; tests/engine cuts a long trace exactly)
    long = reasoning_chat(client, max_tokens=400, extra={"thinking_deadline_ms": 150, "reasoning_answer_reserve": 0})
    message = long.choices[0].message
    assert message.reasoning_cut == "deadline" and message.content
    assert metric(base_url, "exaone:reasoning_cuts_total", reason="deadline") - before == 1
    both = reasoning_chat(client, max_tokens=40, extra={"thinking_token_budget": 3, "thinking_deadline_ms": 60_000})
    assert both.choices[0].message.reasoning_cut == "budget"


def test_server_default_deadline_and_bad_fields(engine, client):
    app = create_app(engine, served_model_names=[MODEL], thinking_deadline_ms=0)
    with live_server(app) as url:
        other = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        assert reasoning_chat(other, max_tokens=40).choices[0].message.reasoning_cut == "deadline"
        assert reasoning_chat(other, max_tokens=40, extra={"thinking_deadline_ms": 60_000,
                                                  "reasoning_answer_reserve": 0,
                                                  "thinking_token_budget": 2}).choices[0].message.reasoning_cut \
            == "budget"
    for field in ("thinking_deadline_ms", "reasoning_answer_reserve"):
        with pytest.raises(Exception, match=field):
            reasoning_chat(client, max_tokens=8, extra={field: -1})
