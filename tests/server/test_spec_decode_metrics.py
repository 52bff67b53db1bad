"""Speculative decoding through the server: streamed and whole answers the same as without it, and vLLM's
spec_decode counters on /metrics."""

from __future__ import annotations

import re

import httpx2
from harness import live_server, running_engine
from openai import OpenAI

from server.app import create_app


def _counter(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def _answers(url: str) -> tuple[str, str]:
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    messages = [{"role": "user", "content": "Say something."}]
    whole = client.chat.completions.create(model="m", messages=messages, max_tokens=24, temperature=0.0)
    stream = client.chat.completions.create(model="m", messages=messages, max_tokens=24, temperature=0.0,
                                            stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    return whole.choices[0].message.content or "", streamed


def test_spec_decode_counters_over_http(exaone_model):
    with running_engine(exaone_model, max_model_len=256) as engine, \
            live_server(create_app(engine, served_model_names=["m"])) as url:
        plain = _answers(url)
        assert "spec_decode" not in httpx2.get(f"{url}/metrics").text
    # the model as its own draft: every drafted token is accepted
    spec = {"model": exaone_model, "num_speculative_tokens": 3}
    with running_engine(exaone_model, max_model_len=256, speculative_config=spec) as engine, \
            live_server(create_app(engine, served_model_names=["m"])) as url:
        assert _answers(url) == plain
        text = httpx2.get(f"{url}/metrics").text
    drafts = _counter(text, "exaone:spec_decode_num_drafts_total")
    drafted = _counter(text, "exaone:spec_decode_num_draft_tokens_total")
    accepted = _counter(text, "exaone:spec_decode_num_accepted_tokens_total")
    assert drafts > 0 and drafted == accepted > drafts
    assert _counter(text, 'exaone:spec_decode_num_accepted_tokens_per_pos_total{position="0"}') == drafts
