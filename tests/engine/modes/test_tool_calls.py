"""Tool-call parsing: whole text and streaming agree; OpenAI delta shapes; malformed blocks stay content."""

import json
import re

import pytest

from engine.modes.reasoning import split_reasoning
from engine.modes.tool_calls import ToolCallParser, parse_tool_calls

CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Seoul", "unit": "celsius"}}</tool_call>'
CASES = [  # text -> (content, [(name, arguments)])
    (CALL, "", [("get_weather", {"city": "Seoul", "unit": "celsius"})]),
    ("Let me check.\n" + CALL + "\n" + CALL.replace("Seoul", "Busan") + "\n", "Let me check.",
     [("get_weather", {"city": "Seoul", "unit": "celsius"}), ("get_weather", {"city": "Busan", "unit": "celsius"})]),
    ('<tool_call> {"name":"f","arguments":{"s": "a}</tool_call>\\"{"}} </tool_call>', "", [("f", {"s": 'a}</tool_call>"{'})]),
    ('<tool_call>{"arguments": {"x": 1}, "name": "g"}</tool_call>', "", [("g", {"x": 1})]),
    ('<tool_call>{"name": "h", "arguments": "{\\"y\\": 2}"}</tool_call>', "", [("h", {"y": 2})]),
    ("Hi.\n<tool_call>not json</tool_call> bye", "Hi.\n<tool_call>not json</tool_call> bye", []),
    ("No tools here, just a < and a <tool.", "No tools here, just a < and a <tool.", []),
    ('Cut: <tool_call>{"name": "f", "argu', "Cut:", []),  # a cut call never reaches the content
]


def _run(pieces: list[str]) -> tuple[str, dict[int, dict]]:
    parser, content, calls = ToolCallParser(), "", {}
    for out in [*(parser.feed(p) for p in pieces), parser.finish()]:
        content += out[0]
        for delta in out[1]:
            shape = delta.to_openai()
            if delta.index not in calls:  # the first delta of a call carries its id, type and name
                assert set(shape) == {"index", "id", "type", "function"} and "name" in shape["function"]
                assert re.fullmatch(r"call_[A-Za-z0-9]{24}", shape["id"])
                calls[delta.index] = {"id": shape["id"], "name": shape["function"]["name"], "arguments": ""}
            else:
                assert set(shape) == {"index", "function"} and set(shape["function"]) == {"arguments"}
            calls[delta.index]["arguments"] += shape["function"]["arguments"]
    assert [c.to_openai() for c in parser.calls] == [
        {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
        for c in calls.values()]
    return content, calls


@pytest.mark.parametrize(("text", "content", "expected"), CASES)
def test_whole_and_streamed_parses_agree(text, content, expected):
    whole_content, whole_calls = parse_tool_calls(text)
    assert whole_content == content
    assert [(c.name, json.loads(c.arguments)) for c in whole_calls] == expected
    for size in (1, 2, 3, 7, len(text)):
        streamed_content, streamed = _run([text[i:i + size] for i in range(0, len(text), size)])
        assert streamed_content == content, size
        assert [(c["name"], json.loads(c["arguments"])) for c in streamed.values()] == expected, size


def test_arguments_stream_in_fragments_before_the_call_closes():
    parser = ToolCallParser()
    content, deltas = parser.feed('Sure. <tool_call>{"name": "get_weather", "arguments": {"ci')
    assert content == "Sure." and [d.name for d in deltas] == ["get_weather", None]
    assert deltas[1].arguments == '{"ci'
    _, deltas = parser.feed('ty": "Seoul"}}</tool_')
    assert [d.arguments for d in deltas] == ['ty": "Seoul"}']
    assert parser.feed("call>")[1] == [] and parser.calls[0].closed
    assert parser.finish() == ("", [])


def test_a_call_cut_by_max_tokens_stays_a_call_marked_open():
    content, calls = parse_tool_calls('<tool_call>{"name": "f", "arguments": {"a": "unfinish')
    assert content == "" and calls[0].name == "f" and not calls[0].closed
    assert calls[0].arguments == '{"a": "unfinish'


def test_tool_calls_in_the_content_after_reasoning():
    text = "I should call get_weather.</think>\n\n" + CALL
    reasoning, content = split_reasoning(text, enabled=True)
    assert reasoning == "I should call get_weather."
    rest, calls = parse_tool_calls(content)
    assert rest == "" and calls[0].name == "get_weather"
