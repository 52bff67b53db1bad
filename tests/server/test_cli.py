"""`exaone-serve` as users run it: serve with an API key and a bounded queue, generate, errors; exaone-chat."""

from __future__ import annotations

import io
import signal
import subprocess
import threading

import httpx2
import openai
import pytest
from harness import assert_openai_error, metric, wait_for, wait_healthy

from benchmarks.loadtest.servers import EXAONE_SERVE, free_port
from clients.chat import ChatSession
from server.cli import served_name

KEY = "sk-test-0123456789"
MODEL = "tiny"


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([EXAONE_SERVE, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def base_url(tiny_models):
    port = free_port()
    proc = subprocess.Popen(
        [EXAONE_SERVE, "serve", "--model", str(tiny_models["llama"]), "--served-model-name", MODEL,
         "--port", str(port), "--api-key", KEY, "--max-num-seqs", "1", "--max-queued-requests", "2",
         "--no-enable-prefix-caching", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url, timeout=120)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
    # Ctrl-C: uvicorn drains and re-raises SIGINT, which ends the CLI quietly with the shell's 130
    assert proc.returncode == 130 and "Traceback" not in output, output


def test_auth_guards_the_api_but_not_health_or_metrics(base_url):
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        for method, path, body in (("POST", "/v1/chat/completions", chat), ("GET", "/v1/models", None),
                                   ("POST", "/tokenize", {"prompt": "hi"})):
            r = httpx2.request(method, f"{base_url}{path}", json=body, headers=headers)
            assert assert_openai_error(r, 401)["code"] == "invalid_api_key"
    assert httpx2.get(f"{base_url}/health").status_code == 200
    assert httpx2.get(f"{base_url}/metrics").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{base_url}/v1", api_key="wrong", max_retries=0).models.list()
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.chat.completions.create(**chat).usage.completion_tokens >= 1
    page = httpx2.get(f"{base_url}/")  # the playground loads without the key; its API calls send it
    assert page.status_code == 200 and "playground" in page.text


def test_prefix_caching_turns_off_by_flag(base_url):
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0)
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi " * 40}], "max_tokens": 2}
    usages = [client.chat.completions.create(**chat).usage for _ in range(2)]
    assert usages[1].prompt_tokens_details.cached_tokens == 0
    assert metric(base_url, "exaone:prefix_cache_queries_total") == 0


def test_burst_past_the_queue_bound_gets_503_and_never_hangs(base_url):
    body = {"model": MODEL, "prompt": "one two three", "max_tokens": 16, "ignore_eos": True}
    barrier = threading.Barrier(20)
    results: list[httpx2.Response] = []

    def send() -> None:
        with httpx2.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as client:
            barrier.wait()
            results.append(client.post(f"{base_url}/v1/completions", json=body))

    threads = [threading.Thread(target=send) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    assert len(results) == 20 and not any(t.is_alive() for t in threads)
    rejected = [r for r in results if r.status_code == 503]
    accepted = [r for r in results if r.status_code == 200]
    assert rejected and accepted and len(rejected) + len(accepted) == 20
    for r in rejected:
        assert int(r.headers["retry-after"]) >= 1
        assert assert_openai_error(r, 503)["code"] == "overloaded"
    assert all(r.json()["usage"]["completion_tokens"] == 16 for r in accepted)
    assert metric(base_url, "exaone:num_requests_waiting") == 0


def test_prompts_accepted_before_an_overload_are_aborted(base_url):
    aborted = metric(base_url, "exaone:request_success_total", finished_reason="abort")
    r = httpx2.post(f"{base_url}/v1/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                    json={"model": MODEL, "prompt": ["a", "b", "c", "d", "e"], "max_tokens": 200, "ignore_eos": True})
    assert assert_openai_error(r, 503)["code"] == "overloaded"
    wait_for(lambda: metric(base_url, "exaone:num_requests_running") == 0, timeout=5)
    assert metric(base_url, "exaone:request_success_total", finished_reason="abort") > aborted


def test_chat_client_keeps_history_and_resets(base_url):
    out = io.StringIO()
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0)
    session = ChatSession(client, MODEL, system="Be brief.", max_tokens=4, out=out)
    first = session.send("Hello")
    session.send("And again")
    assert [m["role"] for m in session.history] == ["system", "user", "assistant", "user", "assistant"]
    assert session.history[2]["content"] == first and out.getvalue().startswith(first)
    session.reset()
    assert session.history == [{"role": "system", "content": "Be brief."}]


def test_a_local_model_is_served_under_its_base_name_not_its_path(tiny_models):
    model = tiny_models["llama"]
    port = free_port()
    proc = subprocess.Popen([EXAONE_SERVE, "serve", "--model", str(model), "--port", str(port), "--enforce-eager",
                             "--kv-cache-memory", "64MiB", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url)
        models = httpx2.get(f"{url}/v1/models")
        assert [m["id"] for m in models.json()["data"]] == [model.name]
        assert str(model.parent) not in models.text
        chat = {"model": model.name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        assert httpx2.post(f"{url}/v1/chat/completions", json=chat).json()["model"] == model.name
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)


def test_served_name_keeps_hub_ids_and_shortens_local_paths(default_gguf, tiny_models, monkeypatch):
    assert served_name("LGAI-EXAONE/EXAONE-4.0-1.2B") == "LGAI-EXAONE/EXAONE-4.0-1.2B"  # not a local path
    assert served_name(str(default_gguf)) == "SmolLM2-135M-Instruct.Q4_1"  # the file's name without .gguf
    assert served_name(None) == "SmolLM2-135M-Instruct"
    monkeypatch.chdir(tiny_models["llama"].parent)  # relative, even "org/name"-shaped, local paths too
    assert served_name(".") == tiny_models["llama"].parent.name
    assert served_name(f"{tiny_models['llama'].name}/") == tiny_models["llama"].name
    monkeypatch.setenv("HOME", str(tiny_models["llama"].parent))
    assert served_name(f"~/{tiny_models['llama'].name}") == tiny_models["llama"].name


def test_generate_prints_the_completion():
    result = run_cli("generate", "--chat", "What is the capital of France?", "--max-tokens", "16")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


@pytest.mark.parametrize("args, expected", [
    (["generate", "--model", "/no/such/model", "hi"], "/no/such/model"),
    (["serve", "--max-num-seqs", "0"], "--max-num-seqs"),
    (["serve", "--default-chat-template-kwargs", "[1]"], "JSON object"),
    (["serve", "--default-chat-template-kwargs", '{"enable_thinking": "yes"}'], "enable_thinking must be a boolean"),
    (["serve", "--max-thinking-tokens", "-1"], "--max-thinking-tokens"),
    (["serve", "--reasoning-answer-reserve", "1.5"], "--reasoning-answer-reserve"),
    (["serve", "--thinking-deadline-ms", "-1"], "--thinking-deadline-ms"),
    (["serve", "--scheduling-policy", "lifo"], "--scheduling-policy"),
    (["serve", "--attention-backend", "flash"], "--attention-backend"),
    (["serve", "--chat-template", "/no/such/template.jinja"], "/no/such/template.jinja"),
    (["serve", "--max-stop-sequences", "0"], "--max-stop-sequences"),
    (["serve", "--compile", "--tensor-parallel-size", "2"], "--compile is for a single rank"),
    (["generate", "--model", "{tiny}", "--max-model-len", "8", "hello " * 20], "max_model_len (8)"),
])
def test_errors_are_one_line_and_exit_1(tiny_models, args, expected):
    result = run_cli(*[a.replace("{tiny}", str(tiny_models["llama"])) for a in args])
    assert result.returncode == 1
    # the weight-loading progress bar may come first; the error itself is one line, without a traceback
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and [line for line in lines if "error" in line] == lines[-1:]
    assert lines[-1].startswith("error: ") and expected in lines[-1], result.stderr
