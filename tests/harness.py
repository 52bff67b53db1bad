"""Helpers for server tests: a real uvicorn on a free loopback port, metrics scraping, engines."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx2
import uvicorn
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.loadtest.servers import free_port
from engine.config import EngineConfig
from engine.core.async_engine import AsyncEngine
from engine.core.llm_engine import LLMEngine

MODEL = "smollm2"  # the name the default-model test servers answer to


def make_engine(model: str | None, max_queued_requests: int | None = None, **config: Any) -> AsyncEngine:
    """An AsyncEngine on the CPU (model None: the embedded default)."""
    return AsyncEngine(LLMEngine(model, "cpu", None, EngineConfig(**config), progress=False), max_queued_requests)


@contextmanager
def running_engine(model: str | None, **config: Any) -> Iterator[AsyncEngine]:
    """make_engine(model, **config), shut down when the block ends."""
    engine = make_engine(model, **config)
    try:
        yield engine
    finally:
        engine.shutdown()


@contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """Serve `app` with uvicorn on a background thread; yields the base URL (http://127.0.0.1:PORT)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        # should_exit, not handle_exit: sse-starlette hooks handle_exit and would flag every later stream
        server.should_exit = True
        thread.join(timeout=30)


def wait_for(predicate: Any, timeout: float, interval: float = 0.02) -> float:
    """Poll until predicate() is truthy; returns the seconds it took, fails after `timeout`."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, f"condition not met within {timeout} s"
        time.sleep(interval)
    return time.monotonic() - start


def wait_healthy(proc: subprocess.Popen, base_url: str, timeout: float = 120) -> None:
    """Wait until a server started as `proc` answers /health with 200; fails at once if it exits."""

    def healthy() -> bool:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else proc.returncode
        try:
            return httpx2.get(f"{base_url}/health").status_code == 200
        except httpx2.TransportError:
            return False

    wait_for(healthy, timeout=timeout, interval=0.2)


def metrics(base_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    text = httpx2.get(f"{base_url}/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric(base_url: str, name: str, **labels: str) -> float:
    """One sample of /metrics (0 when absent, as Prometheus counters start)."""
    return metrics(base_url).get((name, tuple(sorted(labels.items()))), 0.0)


def kv_blocks_used(base_url: str) -> float:
    """KV blocks in use over all layer kinds, from /metrics."""
    return sum(v for (name, _), v in metrics(base_url).items() if name == "exaone:kv_cache_used_blocks")


def assert_openai_error(response: httpx2.Response, status: int, param: str | None = None) -> dict[str, Any]:
    """The response has `status` and OpenAI's error shape; returns the error object."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param, error
    return error
