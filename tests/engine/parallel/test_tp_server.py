"""`exaone-serve serve --tensor-parallel-size 2` as users run it: it answers, and dies whole with rank 0."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from harness import metrics, wait_for, wait_healthy
from openai import OpenAI

from benchmarks.loadtest.servers import EXAONE_SERVE, free_port


def descendants(pid: int) -> list[int]:
    """Every process below pid, from /proc (children of each thread)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            children = (task / "children").read_text().split() if (task / "children").exists() else []
            found += map(int, children)
            todo += map(int, children)
    return found


def running(pid: int) -> bool:
    """True while pid exists and is not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def tp_server(tiny_models):
    port = free_port()
    proc = subprocess.Popen(
        [EXAONE_SERVE, "serve", "--model", str(tiny_models["exaone_hybrid"]), "--served-model-name", "tiny",
         "--port", str(port), "--tensor-parallel-size", "2", "--kv-cache-memory", "32MiB",
         "--max-model-len", "512", "--log-level", "info"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url, timeout=180)
        yield proc, url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # only if the test failed before its own kill
        proc.wait(timeout=30)


def test_tp2_server_answers_and_leaves_nothing_when_rank0_is_killed(tp_server):
    proc, url = tp_server
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello"}],
                                           max_tokens=4, temperature=0)
    assert reply.choices[0].finish_reason in ("length", "stop") and reply.usage.completion_tokens >= 1
    # the gauges vLLM-aware routers (llm-d / Inference Extension endpoint picker) scrape, by vLLM's names
    scraped = metrics(url)
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:gpu_cache_usage_perc"):
        assert scraped[(name, ())] == 0.0, name
    [(labels, value)] = [(dict(labels), v) for (name, labels), v in scraped.items() if name == "vllm:cache_config_info"]
    assert labels["block_size"] == "16" and int(labels["num_gpu_blocks"]) > 0 and value == 1.0
    children = descendants(proc.pid)
    assert children, "no worker process was spawned"
    proc.send_signal(signal.SIGKILL)  # kill -9 of rank 0: no handler, no atexit runs
    proc.wait(timeout=30)
    wait_for(lambda: not any(running(pid) for pid in children), timeout=30, interval=0.1)


def test_bad_tensor_parallel_size_fails_with_one_line(tiny_models):
    result = subprocess.run([EXAONE_SERVE, "generate", "hi", "--model", str(tiny_models["exaone_hybrid"]),
                             "--tensor-parallel-size", "3"], capture_output=True, text=True, timeout=120)
    lines = [line for line in result.stderr.splitlines() if not line.startswith(("[transformers]", "WARNING transformers"))]
    assert result.returncode == 1
    assert lines == ["error: tensor_parallel_size 3 must divide this model's attention heads (4), "
                     "intermediate_size (128), KV heads (2, or be a multiple of them)"], result.stderr
