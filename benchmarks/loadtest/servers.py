"""Start a target server for a run and stop it after, so that one server at a time holds the machine;
read its gauges from /metrics."""

from __future__ import annotations

import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

EXAONE_SERVE = str(Path(sys.executable).parent / "exaone-serve")  # the console script beside this interpreter
SERVER_GAUGES = {"exaone:num_requests_running": "running", "exaone:num_requests_waiting": "waiting",
                 "exaone:fast_lane_running": "fast_lane",
                 "exaone:spec_decode_num_drafts_total": "spec_drafts",
                 "exaone:spec_decode_num_accepted_tokens_total": "spec_accepted"}


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exaone_serve(serve_args: str) -> tuple[list[str], str]:
    """The command line of `exaone-serve serve` on a free loopback port with extra flags, and its URL."""
    port = free_port()
    command = [EXAONE_SERVE, "serve", "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning", *shlex.split(serve_args)]
    return command, f"http://127.0.0.1:{port}"


def _healthy(base_url: str) -> bool:
    try:  # exaone-serve, llama-server and vLLM all answer /health with 200 once the model is loaded
        return requests.get(f"{base_url}/health", timeout=5).status_code == 200
    except requests.RequestException:
        return False


@contextmanager
def started(command: list[str] | None, base_url: str, timeout: float = 900.0) -> Iterator[subprocess.Popen | None]:
    """Run `command` until the block ends (SIGINT, then kill); wait for `base_url`/health first and yield
    its process. None: no-op (yields None)."""
    if command is None:
        yield None
        return
    print(f"starting: {shlex.join(command)}", file=sys.stderr)
    proc = subprocess.Popen(command)
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(base_url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ValueError(f"{command[0]} did not become ready at {base_url} (exit status {proc.poll()})")
            time.sleep(1.0)
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def server_gauges(base_url: str, session: requests.Session) -> dict[str, float]:
    """Our server's queue, running batch, KV use (max over layer kinds) and preemptions, from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    sample: dict[str, float] = {}
    text = session.get(f"{base_url}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("exaone:num_preemptions"):  # one sample per cause: their sum, and each
                sample["preemptions"] = sample.get("preemptions", 0.0) + s.value
                if "cause" in s.labels:
                    sample[f"preemptions_{s.labels['cause']}"] = s.value
            elif s.name in SERVER_GAUGES:
                sample[SERVER_GAUGES[s.name]] = s.value
            elif s.name == "exaone:kv_cache_usage_perc":
                sample["kv_usage"] = max(sample.get("kv_usage", 0.0), s.value)
    return sample
