"""Tool calling, structured output and the reasoning fallback through HTTP on the embedded default model."""

from __future__ import annotations

import json

import httpx2
import jsonschema
from fixtures_tools import PERSON, SCHEMAS, TOOLS
from harness import MODEL

ASK = [{"role": "user", "content": "What's the weather like in Paris today?"}]
SEEDS = 20  # n samples of one request get seeds 0..n-1 and share one prefill


def tools_request(**fields) -> dict:
    return {"model": MODEL, "messages": ASK, "tools": TOOLS, "temperature": 0.8, "max_tokens": 64, **fields}


def assert_valid_calls(message, count: int | None = None) -> None:
    calls = message.tool_calls or []
    assert calls and (count is None or len(calls) == count), message
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_required_tool_calls_always_parse_and_validate(client):
    r = client.chat.completions.create(**tools_request(tool_choice="required", parallel_tool_calls=False,
                                                       n=SEEDS, seed=0))
    assert len(r.choices) == SEEDS
    for choice in r.choices:
        assert choice.finish_reason == "tool_calls" and not choice.message.content, choice
        assert_valid_calls(choice.message, count=1)


def test_streamed_tool_call_has_openai_delta_shape_and_matches(client):
    kwargs = tools_request(tool_choice="required", parallel_tool_calls=False, seed=3)
    full = client.chat.completions.create(**kwargs).choices[0]
    pieces = [c.choices[0] for c in client.chat.completions.create(**kwargs, stream=True) if c.choices]
    calls = [d for p in pieces for d in p.delta.tool_calls or []]
    head, rest = calls[0], calls[1:]
    assert head.index == 0 and head.id.startswith("call_") and head.type == "function"
    assert head.function.name == full.message.tool_calls[0].function.name
    assert rest and all(d.index == 0 and d.id is None and d.function.name is None for d in rest)
    arguments = "".join(d.function.arguments or "" for d in calls)
    assert arguments == full.message.tool_calls[0].function.arguments
    assert not "".join(p.delta.content or "" for p in pieces)
    assert [p.finish_reason for p in pieces if p.finish_reason] == ["tool_calls"] == [full.finish_reason]


def test_named_choice_calls_that_function(client):
    choice = {"type": "function", "function": {"name": "get_time"}}
    r = client.chat.completions.create(**tools_request(tool_choice=choice, n=4, seed=0))
    for c in r.choices:
        assert c.finish_reason == "tool_calls" and [t.function.name for t in c.message.tool_calls] == ["get_time"]
        assert_valid_calls(c.message)


def test_none_offers_no_tools_and_yields_no_calls(client, base_url):
    r = client.chat.completions.create(**tools_request(tool_choice="none", max_tokens=24, seed=0))
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason != "tool_calls"
    plain = httpx2.post(f"{base_url}/tokenize", json={"messages": ASK}).json()["count"]
    assert r.usage.prompt_tokens == plain  # the prompt does not list the tools


def test_two_turn_conversation_with_a_tool_result_continues(client, base_url):
    first = client.chat.completions.create(**tools_request(tool_choice="required", parallel_tool_calls=False,
                                                           seed=1)).choices[0].message
    call = first.tool_calls[0]
    messages = [*ASK, first.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "clear"}'}]
    second = client.chat.completions.create(**{**tools_request(seed=1, max_tokens=32), "messages": messages})
    assert second.choices[0].message.content or second.choices[0].message.tool_calls
    # the generic fallback (SmolLM2's template ignores tools) rendered the call and its result
    tokens = httpx2.post(f"{base_url}/tokenize", json={"messages": messages, "tools": TOOLS}).json()["tokens"]
    text = httpx2.post(f"{base_url}/detokenize", json={"tokens": tokens}).json()["prompt"]
    assert f'<tool_call>{{"name": "{call.function.name}", "arguments": {call.function.arguments}}}</tool_call>' in text
    assert '<tool_result>{"result": "{\\"temperature\\": 21, \\"sky\\": \\"clear\\"}"}</tool_result>' in text


def test_response_format_json_schema_always_validates(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    messages = [{"role": "user", "content": "Describe a fictional programmer as JSON with name, age and languages."}]
    r = client.chat.completions.create(model=MODEL, messages=messages, response_format=fmt, temperature=0.8,
                                       max_tokens=64, n=SEEDS, seed=0)
    for choice in r.choices:
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), PERSON)


def test_reasoning_fallback_for_a_template_without_thinking(client, base_url):
    on = httpx2.post(f"{base_url}/tokenize", json={"messages": ASK, "reasoning": True}).json()["tokens"]
    text = httpx2.post(f"{base_url}/detokenize", json={"tokens": on}).json()["prompt"]
    assert text.endswith("assistant\n<think>\n")  # /detokenize drops the special <|im_start|>
    r = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=40, temperature=0.8, seed=0,
                                       extra_body={"reasoning": True, "thinking_token_budget": 6})
    message, usage = r.choices[0].message, r.usage
    assert message.reasoning_content and message.content
    assert "think>" not in message.reasoning_content + message.content
    forced = len(httpx2.post(f"{base_url}/tokenize", json={"prompt": "</think>\n\n", "add_special_tokens": False})
                 .json()["tokens"])
    assert 0 < usage.completion_tokens_details.reasoning_tokens <= 6 + forced


def test_a_call_cut_by_max_tokens_never_reaches_the_content(client):
    for max_tokens in (2, 5, 8, 11):  # cut inside the tag, the name, the arguments
        kwargs = tools_request(tool_choice="required", max_tokens=max_tokens, seed=5, n=2)
        for choice in client.chat.completions.create(**kwargs).choices:
            assert "<tool_call>" not in (choice.message.content or ""), (max_tokens, choice)
        for chunk in client.chat.completions.create(**kwargs, stream=True):
            for c in chunk.choices:
                assert "<tool_call>" not in (c.delta.content or ""), (max_tokens, chunk)
