"""Prefix caching over HTTP: usage.prompt_tokens_details.cached_tokens is the engine's hit, streamed or not;
hit counters and rate in /metrics; POST /reset_prefix_cache behind the API key."""

from __future__ import annotations

import httpx2
import pytest
from harness import MODEL, live_server, metrics, running_engine
from openai import OpenAI

from server.app import create_app

KEY = "secret"
SYSTEM = "You are a terse assistant for a hardware shop. " * 8  # ~80 tokens: several 16-token blocks


@pytest.fixture(scope="module")
def base_url():
    with running_engine(None, max_model_len=1024) as engine, \
            live_server(create_app(engine, served_model_names=[MODEL], api_key=KEY)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url: str) -> OpenAI:
    return OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0, timeout=120)


def hits(base_url: str) -> float:
    return metrics(base_url)[("exaone:prefix_cache_hits_total", ())]


def chat(client: OpenAI, question: str, **kw):
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    return client.chat.completions.create(model=MODEL, messages=messages, max_tokens=3, temperature=0, **kw)


def test_cached_tokens_are_the_engine_hit_streamed_or_not(client, base_url):
    first = chat(client, "Do you sell hammers?")
    before = hits(base_url)
    second = chat(client, "Do you sell nails?")
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached == hits(base_url) - before
    assert 16 <= cached < second.usage.prompt_tokens and cached % 16 == 0
    assert first.usage.prompt_tokens_details.cached_tokens < cached
    before = hits(base_url)
    chunks = list(chat(client, "Do you sell saws?", stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == hits(base_url) - before == cached
    completion = client.completions.create(model=MODEL, prompt=SYSTEM + "Hello", max_tokens=2)
    assert completion.usage.prompt_tokens_details.cached_tokens % 16 == 0
    sample = metrics(base_url)
    rate = sample[("exaone:prefix_cache_hit_rate", ())]
    assert rate == pytest.approx(sample[("exaone:prefix_cache_hits_total", ())]
                                 / sample[("exaone:prefix_cache_queries_total", ())])
    assert 0 < rate < 1


def test_reset_prefix_cache_needs_the_key_and_forgets(client, base_url):
    chat(client, "Do you sell drills?")
    assert httpx2.post(f"{base_url}/reset_prefix_cache").status_code == 401
    assert chat(client, "Do you sell drills?").usage.prompt_tokens_details.cached_tokens > 0
    r = httpx2.post(f"{base_url}/reset_prefix_cache", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200
    assert chat(client, "Do you sell drills?").usage.prompt_tokens_details.cached_tokens == 0
