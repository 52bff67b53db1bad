"""Graceful shutdown of a real `exaone-serve serve` process: drain on SIGTERM, cut at the deadline, force twice."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import uvicorn
from harness import assert_openai_error, make_engine, metric, wait_for, wait_healthy

from benchmarks.loadtest.servers import EXAONE_SERVE, free_port
from server.app import create_app
from server.shutdown import DrainingServer

MODEL = "tiny"
LONG = 3000  # tokens no test waits for: the tiny model takes seconds for them on a CPU


@contextmanager
def serve(model: Path, *flags: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """A real server process; yields (process, base URL) once /health is 200, and kills it if still there."""
    port = free_port()
    proc = subprocess.Popen(
        [EXAONE_SERVE, "serve", "--model", str(model), "--served-model-name", MODEL, "--port", str(port),
         "--max-model-len", "4096", "--kv-cache-memory", "64MiB", "--log-level", "info", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"

    try:
        wait_healthy(proc, url)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def chat(max_tokens: int, stream: bool) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Tell me everything."}],
            "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0, "stream": stream}


class StreamReader(threading.Thread):
    """Reads one streamed chat completion on a thread; `started` is set after its first content chunk."""

    def __init__(self, url: str, body: dict) -> None:
        super().__init__(daemon=True)
        self.url, self.body = url, body
        self.started = threading.Event()
        self.events: list[str] = []
        self.ended_at: float | None = None

    def run(self) -> None:
        with httpx2.stream("POST", f"{self.url}/v1/chat/completions", json=self.body, timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    self.events.append(line.removeprefix("data: "))
                    if len(self.events) >= 3:
                        self.started.set()
        self.ended_at = time.monotonic()

    def chunks(self) -> list[dict]:
        assert self.events[-1] == "[DONE]", self.events[-3:]
        return [json.loads(e) for e in self.events[:-1]]

    def text(self) -> str:
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in self.chunks() if c["choices"])


def output(proc: subprocess.Popen) -> str:
    text = proc.stdout.read()
    assert "Traceback" not in text, text
    return text


def test_sigterm_drains_the_stream_in_flight_and_refuses_new_requests(tiny_models):
    with serve(tiny_models["llama"], "--shutdown-timeout", "600") as (proc, url):
        body = chat(500, stream=True)
        expected = httpx2.post(f"{url}/v1/chat/completions", json={**body, "stream": False}, timeout=300)
        reader = StreamReader(url, body)
        reader.start()
        assert reader.started.wait(60)
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: httpx2.get(f"{url}/health").status_code == 503, timeout=5)

        health = httpx2.get(f"{url}/health")
        assert assert_openai_error(health, 503)["code"] == "draining" and health.headers["retry-after"]
        refused = httpx2.post(f"{url}/v1/chat/completions", json=chat(4, stream=False))
        assert assert_openai_error(refused, 503)["code"] == "draining"
        assert int(refused.headers["retry-after"]) >= 1
        assert metric(url, "exaone:server_draining") == 1
        refused_at = time.monotonic()

        reader.join(timeout=300)
        assert reader.ended_at > refused_at  # the stream was still running while new requests were refused
        assert reader.chunks()[-1]["choices"][0]["finish_reason"] == "length"
        assert reader.text() == expected.json()["choices"][0]["message"]["content"]  # as without the signal
        assert proc.wait(timeout=30) == 0
    assert "draining 1 request(s)" in output(proc)


def test_shutdown_timeout_cuts_streams_with_a_last_chunk_and_bodies_with_an_error(tiny_models):
    with serve(tiny_models["llama"], "--shutdown-timeout", "1") as (proc, url):
        reader = StreamReader(url, chat(LONG, stream=True))
        reader.start()
        bodies: list[httpx2.Response] = []
        blocking = threading.Thread(target=lambda: bodies.append(
            httpx2.post(f"{url}/v1/chat/completions", json=chat(LONG, stream=False), timeout=120)))
        blocking.start()
        assert reader.started.wait(60)
        wait_for(lambda: metric(url, "exaone:num_requests_running") == 2, timeout=10)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)

        reader.join(timeout=30)
        blocking.join(timeout=30)
        assert reader.ended_at - signalled < 3  # about the one second it was given
        chunks = reader.chunks()
        assert chunks[-1]["choices"][0]["finish_reason"] == "abort"
        assert len(reader.text()) > 0 and len(chunks) < LONG
        assert assert_openai_error(bodies[0], 503)["code"] == "shutdown"
        assert proc.wait(timeout=15) == 0  # the engine stopped and the process is gone, blocks and threads with it
    assert "shutdown timeout: ending 2 request(s)" in output(proc)


def test_second_signal_ends_the_drain_at_once(tiny_models):
    with serve(tiny_models["llama"]) as (proc, url):
        reader = StreamReader(url, chat(LONG, stream=True))
        reader.start()
        assert reader.started.wait(60)
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: metric(url, "exaone:server_draining") == 1, timeout=5)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0  # long before the 30 s drain would end
        assert time.monotonic() - signalled < 5
        reader.join(timeout=5)
        assert reader.chunks()[-1]["choices"][0]["finish_reason"] == "abort"  # cut, yet with a last chunk
    assert "second signal: ending 1 request(s)" in output(proc)


def test_engine_death_ends_streams_with_an_error_and_stops_the_server(tiny_models):
    engine = make_engine(str(tiny_models["llama"]), max_model_len=4096, kv_cache_memory=64 << 20)
    step, steps = engine.engine.step, []

    def crash_after_ten() -> list:
        steps.append(1)
        if len(steps) > 10:
            raise RuntimeError("kernel exploded")
        return step()

    engine.engine.step = crash_after_ten  # fault injection: the step loop dies mid-stream
    app = create_app(engine, served_model_names=[MODEL])
    port = free_port()
    server = DrainingServer(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"),
                            app.state.server, shutdown_timeout=30)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=30)
        reader = StreamReader(f"http://127.0.0.1:{port}", chat(LONG, stream=True))
        reader.run()
        assert 10 <= len(reader.events) < LONG
        error = json.loads(reader.events[-2])["error"]
        assert error["code"] == "engine_dead" and "kernel exploded" in error["message"]
        assert reader.events[-1] == "[DONE]"
        thread.join(timeout=10)
        assert not thread.is_alive() and server.engine_died  # the server stopped by itself
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.shutdown()
