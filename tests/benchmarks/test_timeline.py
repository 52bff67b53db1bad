"""A recorded SSE stream with multi-token chunks through the timeline, against hand-computed latencies."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.loadtest.arrivals import arrival_times
from benchmarks.loadtest.scenarios import DEFAULT_MIX, mix_sequence, parse_mix
from benchmarks.loadtest.stats import is_good, parse_slo, summarize
from benchmarks.loadtest.timeline import RequestRecord, StreamReader

SENT = 10.0


def _chunk(delta: dict, tokens: int = 0, finish: str | None = None, logprobs: bool = True) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    if logprobs:
        choice["logprobs"] = {"content": [{"token": "t", "logprob": -0.1, "top_logprobs": []}] * tokens}
    return f"data: {json.dumps({'object': 'chat.completion.chunk', 'choices': [choice], 'usage': None})}\n\n".encode()


def _usage(completion: int, reasoning: int) -> bytes:
    usage = {"prompt_tokens": 12, "completion_tokens": completion, "total_tokens": 12 + completion,
             "completion_tokens_details": {"reasoning_tokens": reasoning}}
    return f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode()


def recorded_stream(logprobs: bool = True) -> list[tuple[float, bytes]]:
    """(arrival time, bytes of one socket read): 3 reasoning tokens, then 6 answer tokens in chunks of 3, 1, 2."""
    role = _chunk({"role": "assistant", "content": ""}, logprobs=logprobs)
    think = _chunk({"reasoning_content": "Let me"}, 2, logprobs=logprobs)
    return [
        (10.05, role),
        (10.30, think[:17]),  # one event split over two reads: nothing counts until its line is whole
        (10.30, think[17:]),
        (10.40, _chunk({"reasoning_content": " think"}, 1, logprobs=logprobs)),
        (10.70, _chunk({"content": "Hello there"}, 3, logprobs=logprobs)),
        (10.80, _chunk({"content": "!"}, 1, logprobs=logprobs)),
        (11.00, _chunk({"content": " Bye"}, 2, logprobs=logprobs) + _chunk({}, 0, "stop", logprobs=logprobs)),
        (11.10, _usage(9, 3) + b"data: [DONE]\n\n"),
    ]


def replay(stream: list[tuple[float, bytes]], scenario: str = "reasoning") -> dict:
    record = RequestRecord(1, scenario, sent=SENT)
    reader = StreamReader(record)
    for t, data in stream:
        reader.feed(data, t)
    reader.finish(stream[-1][0])
    assert reader.done
    return record.to_json()


def test_multi_token_chunks_give_per_token_gaps() -> None:
    r = replay(recorded_stream())
    m = r["metrics"]
    assert r["first_byte"] == 10.05 and r["finish_reason"] == "stop" and r["content"] == "Hello there! Bye"
    assert m["ttft"] == pytest.approx(0.30)  # the first reasoning token, not the role chunk
    assert m["ttfo"] == pytest.approx(0.70)  # the first answer token
    assert m["reasoning_time"] == pytest.approx(0.40)
    assert m["e2e"] == pytest.approx(1.10)
    assert m["output_tokens"] == 9 == m["usage_completion_tokens"] and m["reasoning_tokens"] == 3
    assert m["tpot"] == pytest.approx((1.10 - 0.30) / 8)
    # chunks of 2, 1, 3, 1, 2 tokens after gaps -, 0.1, 0.3, 0.1, 0.2: each token of a chunk gets gap / k
    assert m["itl"] == pytest.approx([0.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert m["itl_chunk"] == pytest.approx([0.1, 0.3, 0.1, 0.2])
    assert r["token_counts"] == "logprobs"


def test_without_logprobs_usage_is_spread_over_chunks_by_length() -> None:
    r = replay(recorded_stream(logprobs=False))
    assert r["token_counts"] == "estimated"
    # 9 tokens over chunks of 6, 6, 11, 1, 4 characters: one each, the other 4 by length (largest remainder)
    assert [c[1] for c in r["chunks"]] == [2, 2, 3, 1, 1]
    assert r["metrics"]["output_tokens"] == 9


def test_goodput_counts_slo_failures_and_answerless_reasoning() -> None:
    slo = parse_slo("ttft=500ms,ttfo=1s,tpot=150ms,e2e=2s")
    assert slo == {"ttft": 0.5, "ttfo": 1.0, "tpot": 0.15, "e2e": 2.0}
    good = replay(recorded_stream())
    slow = replay([(t + 0.5 if t > 10.1 else t, data) for t, data in recorded_stream()])  # TTFO 1.2 s
    cut = [*recorded_stream()[:4], (10.5, _chunk({}, 0, "length") + _usage(3, 3) + b"data: [DONE]\n\n")]
    cut = replay(cut)  # the budget ended the thinking and max_tokens the answer: nothing the user sees
    failed = RequestRecord(4, "reasoning", status="error", sent=SENT, error="HTTP 500").to_json()
    assert cut["metrics"]["ttfo"] is None and cut["metrics"]["ttft"] == pytest.approx(0.30)
    assert [is_good(r, slo) for r in (good, slow, cut, failed)] == [True, False, False, False]
    summary = summarize([good, slow, cut, failed], slo)
    assert summary["good"] == 1 and summary["goodput_share"] == pytest.approx(0.25)
    assert summary["completed"] == 3 and summary["errors"] == 1
    assert summary["answered_share"] == pytest.approx(2 / 3)
    # span from the first send (10.0) to the last end (11.6): goodput 1 request in 1.6 s
    assert summary["goodput_requests_per_s"] == pytest.approx(1 / 1.6)
    assert summary["latency"]["ttft"]["p50"] == pytest.approx(0.30)
    assert summary["latency"]["ttfo"]["count"] == 2


def test_tool_call_pieces_are_joined_and_validated() -> None:
    stream = [
        (10.1, _chunk({"role": "assistant", "content": ""})),
        (10.4, _chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                                       "function": {"name": "get_weather", "arguments": '{"city": '}}]}, 5)),
        (10.5, _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}, 3)),
        (10.6, _chunk({}, 0, "tool_calls") + _usage(8, 0) + b"data: [DONE]\n\n"),
    ]
    r = replay(stream, "tools")
    assert r["tool_calls"] == [{"name": "get_weather", "arguments": '{"city": "Oslo"}'}]
    assert r["metrics"]["ttfo"] == pytest.approx(0.4) and r["first_tool_call"] == 10.4
    from benchmarks.loadtest.scenarios import validate
    from benchmarks.loadtest.timeline import ToolCall

    assert validate("tools", "", [ToolCall("get_weather", '{"city": "Oslo"}')]) is True
    assert validate("tools", "", [ToolCall("get_weather", '{"town": "Oslo"}')]) is False  # schema: city required
    assert validate("tools", "", [ToolCall("launch", "{}")]) is False  # not an offered tool
    assert validate("json", '{"name": "A", "age": 3, "city": "B"}', []) is True
    assert validate("json", '{"name": "A"', []) is False


def test_arrivals_and_mix_are_seeded() -> None:
    poisson = arrival_times(4.0, 30.0, "poisson", seed=1)
    assert poisson == arrival_times(4.0, 30.0, "poisson", seed=1) != arrival_times(4.0, 30.0, "poisson", seed=2)
    assert 80 < len(poisson) < 160 and all(0 <= t < 30 for t in poisson)
    assert arrival_times(2.0, 2.0, "constant") == [0.0, 0.5, 1.0, 1.5]
    bursty = arrival_times(4.0, 200.0, "gamma", burstiness=0.25, seed=1)
    cv = [np.std(np.diff(t)) / np.mean(np.diff(t)) for t in (poisson, bursty)]
    assert cv[1] > 1.5 > cv[0] * 1.2  # gamma of shape 1/4: coefficient of variation 2; Poisson: 1
    seq = mix_sequence(DEFAULT_MIX)
    assert {n: seq.count(n) for n in DEFAULT_MIX} == DEFAULT_MIX
    assert parse_mix("chat") == {"chat": 1.0} and parse_mix("chat=3,json=1") == {"chat": 3.0, "json": 1.0}
    with pytest.raises(ValueError, match="unknown scenario"):
        parse_mix("poetry")
