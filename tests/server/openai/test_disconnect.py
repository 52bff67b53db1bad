"""A client that goes away mid-stream or mid-request: the request is aborted and its KV blocks are free."""

from __future__ import annotations

import json
import socket
import time

import httpx2
import pytest
from harness import kv_blocks_used, live_server, metric, running_engine, wait_for

from server.app import create_app

MODEL = "tiny-hybrid"
LONG = 3000  # far more tokens than the test waits for: finishing on its own would take seconds


@pytest.fixture(scope="module")
def base_url(tiny_models):
    with running_engine(str(tiny_models["exaone_hybrid"]), max_model_len=4096) as engine, \
            live_server(create_app(engine, served_model_names=[MODEL])) as url:
        yield url


def long_request(stream: bool) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Tell me everything."}],
            "max_tokens": LONG, "ignore_eos": True, "temperature": 0, "stream": stream}


def idle(base_url: str) -> bool:
    return metric(base_url, "exaone:num_requests_running") == 0 and kv_blocks_used(base_url) == 0


def test_dropped_stream_is_aborted_and_frees_blocks(base_url):
    aborted = metric(base_url, "exaone:request_success_total", finished_reason="abort")
    generated = metric(base_url, "exaone:generation_tokens_total")
    with httpx2.stream("POST", f"{base_url}/v1/chat/completions", json=long_request(True), timeout=60) as r:
        assert r.status_code == 200
        events = 0
        for line in r.iter_lines():
            events += line.startswith("data: ")
            if events == 5:
                assert kv_blocks_used(base_url) > 0  # the request holds blocks while it runs
                break
    # leaving the block closes the connection mid-stream
    wait_for(lambda: idle(base_url), timeout=5)
    assert metric(base_url, "exaone:request_success_total", finished_reason="abort") == aborted + 1
    assert metric(base_url, "exaone:generation_tokens_total") - generated < LONG / 2


def test_dropped_non_streaming_request_is_aborted(base_url):
    aborted = metric(base_url, "exaone:request_success_total", finished_reason="abort")
    body = json.dumps(long_request(False)).encode()
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        wait_for(lambda: metric(base_url, "exaone:num_requests_running") == 1, timeout=10)
    seconds = wait_for(lambda: idle(base_url), timeout=5)
    assert metric(base_url, "exaone:request_success_total", finished_reason="abort") == aborted + 1
    assert seconds < 2


def test_server_serves_normally_after_drops(base_url):
    start = time.monotonic()
    r = httpx2.post(f"{base_url}/v1/chat/completions", json={**long_request(False), "max_tokens": 4}, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
    assert time.monotonic() - start < 30
    wait_for(lambda: idle(base_url), timeout=5)
