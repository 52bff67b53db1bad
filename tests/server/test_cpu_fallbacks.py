"""`serve --dtype bfloat16` on an AVX2-only CPU: the process that crashed at load now answers through the SDK."""

import signal
import subprocess

from fixtures_cpu import avx2_only_env
from harness import wait_healthy
from openai import OpenAI

from benchmarks.loadtest.servers import EXAONE_SERVE, free_port


def test_bf16_server_answers_on_an_avx2_only_cpu(exaone_model):
    port = free_port()
    proc = subprocess.Popen(
        [EXAONE_SERVE, "serve", "--model", str(exaone_model), "--served-model-name", "tiny", "--port", str(port),
         "--dtype", "bfloat16", "--kv-cache-memory", "32MiB", "--log-level", "info"],
        env=avx2_only_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url, timeout=300)
        client = OpenAI(base_url=f"{url}/v1", api_key="none")
        reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}],
                                               max_tokens=8, temperature=0)
        assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens > 0
        stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=4, stream=True)
        assert [c for c in stream if c.choices and c.choices[0].finish_reason]
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    assert "CPU AVX2" in output and "bfloat16 plain F.linear" in output, output[-3000:]
