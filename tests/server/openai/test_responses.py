"""The Responses API through the official SDK on a real server: items, reasoning, tools, formats, events."""

from __future__ import annotations

import json

import httpx2
import jsonschema
import openai
import pytest
from fixtures_tools import PERSON, WEATHER
from harness import MODEL, assert_openai_error, live_server, metric, running_engine, wait_for
from openai import OpenAI

from server.app import create_app

TOOLS = [{"type": "function", "name": "get_weather", "description": "Current weather in a city",
          "parameters": WEATHER, "strict": True}]
CHAT_TOOLS = [{"type": "function", "function": {k: v for k, v in TOOLS[0].items() if k != "type"}}]
EXAONE = "exaone"
THINKING_CAP = 4  # the thinking app's --max-thinking-tokens: "high" effort still ends its thinking
SMALL_KV = 64 << 20  # bytes: the tiny model needs a few MB; the 1GiB default adds up over the suite


@pytest.fixture(scope="module")
def thinking_client(exaone_model):
    """A tiny random EXAONE 4.0 (thinking template) whose server caps thinking, so answers follow."""
    with running_engine(exaone_model, max_model_len=512, kv_cache_memory=SMALL_KV) as engine, \
            live_server(create_app(engine, served_model_names=[EXAONE], max_thinking_tokens=THINKING_CAP)) as url:
        yield OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def items(response) -> list[str]:
    return [item.type for item in response.output]


def same_output(a, b) -> None:
    """Two responses agree on everything but ids and times."""
    assert (a.status, a.incomplete_details, a.usage) == (b.status, b.incomplete_details, b.usage)
    assert len(a.output) == len(b.output)
    for x, y in zip(a.output, b.output, strict=True):
        assert dump(x, {"id", "call_id"}) == dump(y, {"id", "call_id"})


def dump(item, exclude: frozenset[str] = frozenset()) -> dict:
    """An output item as data (the SDK's parsed and plain classes alike: its own parse left out)."""
    return item.model_dump(exclude={"parsed_arguments", *exclude}, exclude_none=True)


def test_string_input_answers_as_chat_does(client):
    question = "What is the capital of France?"
    r = client.responses.create(model=MODEL, input=question, max_output_tokens=16, temperature=0)
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": question}],
                                          max_tokens=16, temperature=0)
    assert r.object == "response" and r.id.startswith("resp_") and r.model == MODEL
    assert items(r) == ["message"] and r.output[0].role == "assistant"
    assert r.output_text == chat.choices[0].message.content and "Paris" in r.output_text
    assert r.usage.input_tokens == chat.usage.prompt_tokens
    assert r.usage.output_tokens == chat.usage.completion_tokens
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.output_tokens_details.reasoning_tokens == 0
    assert r.status == ("incomplete" if chat.choices[0].finish_reason == "length" else "completed")


def test_message_items_and_instructions_render_as_chat_messages(client):
    conversation = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Hello Ada!"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "What is my name?"}]},
    ]
    r = client.responses.create(model=MODEL, input=conversation, instructions="Answer in one word.",
                                max_output_tokens=8, temperature=0, metadata={"case": "items"}, user="tester")
    messages = [{"role": "system", "content": "Answer in one word."},
                {"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": "Hello Ada!"},
                {"role": "user", "content": "What is my name?"}]
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)
    assert r.output_text == chat.choices[0].message.content
    assert r.usage.input_tokens == chat.usage.prompt_tokens
    assert r.metadata == {"case": "items"} and r.user == "tester" and r.instructions == "Answer in one word."


def test_max_output_tokens_cut_is_incomplete(client):
    r = client.responses.create(model=MODEL, input="Tell me a long story.", max_output_tokens=3, temperature=0)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 3 and r.output[0].status == "incomplete"


def test_effort_none_has_no_reasoning_item_and_high_reasons_first(thinking_client):
    ask = {"model": EXAONE, "input": "Hi?", "max_output_tokens": 24, "temperature": 0}
    off = thinking_client.responses.create(**ask, reasoning={"effort": "none"})
    assert "reasoning" not in items(off) and off.usage.output_tokens_details.reasoning_tokens == 0
    on = thinking_client.responses.create(**ask, reasoning={"effort": "high"})
    assert items(on)[:2] == ["reasoning", "message"] and on.reasoning.effort == "high"
    chat = thinking_client.chat.completions.create(model=EXAONE, messages=[{"role": "user", "content": "Hi?"}],
                                                   max_tokens=24, temperature=0, reasoning_effort="high")
    thinking = on.output[0].content[0]
    assert thinking.type == "reasoning_text" and thinking.text == chat.choices[0].message.reasoning_content
    assert on.output_text == chat.choices[0].message.content
    assert on.usage.output_tokens_details.reasoning_tokens == chat.usage.completion_tokens_details.reasoning_tokens > 0


def cuts(sdk: OpenAI, reason: str) -> float:
    return metric(str(sdk.base_url).removesuffix("/v1/"), "exaone:reasoning_cuts_total", reason=reason)


def test_a_cut_thinking_span_is_reported_on_its_reasoning_item_and_counted(thinking_client):
    ask = {"model": EXAONE, "input": "Hi?", "max_output_tokens": 40, "temperature": 0}
    before = cuts(thinking_client, "budget")
    r = thinking_client.responses.create(**ask, reasoning={"effort": "high"})  # the server's cap of 4 cuts it
    chat = thinking_client.chat.completions.create(model=EXAONE, messages=[{"role": "user", "content": "Hi?"}],
                                                   max_tokens=40, temperature=0, reasoning_effort="high")
    assert chat.choices[0].message.reasoning_cut == "budget"
    assert items(r)[0] == "reasoning" and r.output[0].model_extra["reasoning_cut"] == "budget"
    events, final = stream_events(thinking_client, **ask, reasoning={"effort": "high"})
    done = [e.item for e in events if e.type == "response.output_item.done" and e.item.type == "reasoning"]
    assert [i.model_extra["reasoning_cut"] for i in (*done, final.output[0])] == ["budget", "budget"]
    assert cuts(thinking_client, "budget") - before == 3  # chat's, and one per response, streamed or not
    # Cut before the first thinking token (16 tokens are all answer reserve): an empty reasoning item says so.
    before = cuts(thinking_client, "answer_reserve")
    short = thinking_client.responses.create(**{**ask, "max_output_tokens": 16}, reasoning={"effort": "low"})
    assert items(short)[0] == "reasoning" and short.output[0].content[0].text == ""
    assert short.output[0].model_extra["reasoning_cut"] == "answer_reserve"
    assert cuts(thinking_client, "answer_reserve") - before == 1
    off = thinking_client.responses.create(**ask, reasoning={"effort": "none"})
    assert "reasoning" not in items(off)


def test_required_tool_call_then_its_output_continues_the_conversation(client):
    ask = [{"role": "user", "content": "What is the weather in Seoul?"}]
    r = client.responses.create(model=MODEL, input=ask, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
                                temperature=0,
                                max_output_tokens=64)
    assert items(r) == ["function_call"] and r.status == "completed"
    call = r.output[0]
    assert call.name == "get_weather" and call.call_id.startswith("call_") and call.id.startswith("fc_")
    jsonschema.validate(json.loads(call.arguments), WEATHER)

    turn = [*ask, *r.output, {"type": "function_call_output", "call_id": call.call_id, "output": "22C, sunny"}]
    second = client.responses.create(model=MODEL, input=turn, tools=TOOLS, max_output_tokens=24, temperature=0)
    messages = [*ask, {"role": "assistant", "content": None, "tool_calls": [
        {"id": call.call_id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.call_id, "content": "22C, sunny"}]
    chat = client.chat.completions.create(model=MODEL, messages=messages, tools=CHAT_TOOLS, max_tokens=24,
                                          temperature=0)
    assert second.usage.input_tokens == chat.usage.prompt_tokens  # the call and its result are in the prompt
    assert second.output_text == (chat.choices[0].message.content or "")


def test_text_format_json_schema_output_validates(client):
    r = client.responses.create(
        model=MODEL, input="Describe a programmer as JSON.", max_output_tokens=96, temperature=0,
        text={"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}})
    assert r.status == "completed"
    jsonschema.validate(json.loads(r.output_text), PERSON)


def deltas(events: list, kind: str) -> str:
    return "".join(e.delta for e in events if e.type == kind)


def stream_events(client: OpenAI, **kwargs) -> tuple[list, object]:
    """The events of `responses.stream`, and the final response (the SDK's own when completed)."""
    with client.responses.stream(**kwargs) as stream:
        events = list(stream)
        if events[-1].type == "response.completed":
            return events, stream.get_final_response()
    return events, events[-1].response


@pytest.mark.parametrize("case", ["reasoning", "message", "function_call"])
def test_stream_events_in_order_and_final_equals_the_unstreamed(client, thinking_client, case):
    sdk, kwargs, status = {
        "reasoning": (thinking_client, {"model": EXAONE, "input": "Hi?", "reasoning": {"effort": "high"}},
                      "incomplete"),  # random weights never stop on their own
        "message": (client, {"model": MODEL, "input": "What is the capital of France?"}, "completed"),
        "function_call": (client, {"model": MODEL, "input": "What is the weather in Seoul?", "tools": TOOLS,
                                   "tool_choice": "required", "parallel_tool_calls": False}, "completed"),
    }[case]
    kwargs = {**kwargs, "max_output_tokens": 64, "temperature": 0}
    events, final = stream_events(sdk, **kwargs)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == f"response.{status}"
    assert final.status == status and [i.type for i in final.output] == (
        ["reasoning", "message"] if case == "reasoning" else [case])
    same_output(final, sdk.responses.create(**kwargs))
    for index, item in enumerate(final.output):
        own = [e for e in events if getattr(e, "output_index", None) == index]
        assert own[0].type == "response.output_item.added" and own[-1].type == "response.output_item.done"
        assert dump(own[-1].item) == dump(item)
        kinds = [e.type for e in own]
        if item.type == "function_call":
            assert own[-2].arguments == deltas(own, "response.function_call_arguments.delta") == item.arguments
            continue
        name = "reasoning_text" if item.type == "reasoning" else "output_text"
        assert kinds[1] == "response.content_part.added" and kinds[-3:] == [
            f"response.{name}.done", "response.content_part.done", "response.output_item.done"]
        assert deltas(own, f"response.{name}.delta") == own[-3].text == item.content[0].text


def test_stored_state_is_refused_naming_the_field(base_url, client):
    with httpx2.Client(base_url=base_url, timeout=60) as http:
        for field, value in (("store", True), ("previous_response_id", "resp_1"), ("background", True),
                             ("conversation", "conv_1")):
            r = http.post("/v1/responses", json={"model": MODEL, "input": "hi", field: value})
            assert field in assert_openai_error(r, 400, field)["message"]
        assert http.post("/v1/responses", json={"model": MODEL, "input": "hi", "store": False,
                                                "max_output_tokens": 1}).json()["store"] is False
        for method, path in (("GET", "/v1/responses/resp_1"), ("POST", "/v1/responses/resp_1/cancel"),
                             ("DELETE", "/v1/responses/resp_1")):
            assert assert_openai_error(http.request(method, path), 404)["code"] == "response_not_found"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_1")


BAD = {
    "unknown item type": ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
    "call without call_id": ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
                             "input[0].call_id"),
    "image part": ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
                   "input[0].content[0]"),
    "unknown effort": ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    "bad tool schema": ({"tools": [{"type": "function", "name": "f", "parameters": {"type": "objekt"}}]},
                        "tools[0].parameters"),
    "web search tool": ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    "bad format schema": ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": 5}}}},
                          "text.format.schema"),
    "zero max_output_tokens": ({"max_output_tokens": 0}, "max_output_tokens"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_fields_are_400_naming_the_field(base_url, case):
    fields, param = BAD[case]
    with httpx2.Client(base_url=base_url, timeout=60) as http:
        assert_openai_error(http.post("/v1/responses", json={"model": MODEL, "input": "hi", **fields}), 400, param)


def test_dropped_stream_aborts_the_request(base_url):
    aborted = metric(base_url, "exaone:request_success_total", finished_reason="abort")
    body = {"model": MODEL, "input": "Tell me everything about the sea.", "max_output_tokens": 900,
            "temperature": 1.0, "stream": True}
    with httpx2.stream("POST", f"{base_url}/v1/responses", json=body, timeout=60) as r:
        assert r.status_code == 200
        deltas = 0
        for line in r.iter_lines():
            deltas += line == "event: response.output_text.delta"
            if deltas == 3:
                break
    wait_for(lambda: metric(base_url, "exaone:request_success_total", finished_reason="abort") == aborted + 1,
             timeout=10)
    wait_for(lambda: metric(base_url, "exaone:num_requests_running") == 0, timeout=5)
