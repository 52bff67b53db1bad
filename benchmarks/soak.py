"""Soak: N mixed requests against one server; nothing may leak and no request may hurt another.

    .venv/bin/python benchmarks/soak.py --requests 10000          # starts `exaone-serve serve` itself
    .venv/bin/python benchmarks/soak.py --base-url http://127.0.0.1:8000 --server-pid PID

The mix: chat, reasoning with a thinking budget, tools (auto and required), completions with logprobs
(and echo), n=2, chat logprobs; half of them streamed, and 20% of all clients drop the connection after
the first chunk. Halfway through, a burst of 4x --max-queued-requests requests arrives at once (503s
expected; --burst-at moves it). Prints requests by outcome, KV blocks still held at the end (must be 0) and the server's RSS
at start and end; exits 1 if a block is held, a request got a 5xx other than 503, or a stream ended in an
error event.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shlex
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import httpx2
import requests
from loadtest.servers import exaone_serve, server_gauges, started

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string"}}, "required": ["city"]}}}
QUESTIONS = ["What is the capital of France?", "Name three primes.", "Say hello in Korean.", "What's 2+2?",
             "What's the weather like in Paris today?", "Write a haiku about rain.", "Why is the sky blue?"]


def request_mix(rng: random.Random, max_tokens: int) -> tuple[str, str, dict]:
    """(kind, route, body) of one random request."""
    messages = [{"role": "user", "content": rng.choice(QUESTIONS)}]
    chat = {"messages": messages, "max_tokens": max_tokens, "temperature": rng.choice([0.0, 0.7])}
    kind = rng.choices(["chat", "reasoning", "tools", "completion", "n2", "logprobs"], [3, 2, 2, 2, 1, 1])[0]
    if kind == "reasoning":
        chat |= {"reasoning": True, "thinking_token_budget": rng.randint(0, 4), "max_tokens": max_tokens + 4}
    elif kind == "tools":
        chat |= {"tools": [WEATHER], "tool_choice": rng.choice(["auto", "required"]), "max_tokens": 2 * max_tokens}
    elif kind == "n2":
        chat |= {"n": 2, "seed": rng.randrange(2**63)}
    elif kind == "logprobs":
        chat |= {"logprobs": True, "top_logprobs": 3}
    if kind == "completion":
        return kind, "/v1/completions", {"prompt": rng.choice(QUESTIONS), "max_tokens": max_tokens, "logprobs": 2,
                                         "echo": rng.random() < 0.3, "temperature": 0.0}
    return kind, "/v1/chat/completions", chat


async def one(client: httpx2.AsyncClient, route: str, body: dict, stream: bool, disconnect: bool) -> str:
    """The outcome of one request: ok, disconnected, 503, 4xx, 5xx, stream_error, or the exception's name."""
    try:
        if not stream:
            r = await client.post(route, json=body)
            return "ok" if r.status_code == 200 else "503" if r.status_code == 503 else f"{r.status_code // 100}xx"
        body = {**body, "stream": True}
        async with client.stream("POST", route, json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return "503" if r.status_code == 503 else f"{r.status_code // 100}xx"
            async for line in r.aiter_lines():
                if disconnect and line.startswith("data: {"):
                    return "disconnected"  # leaving the block drops the connection mid-stream
                if line.startswith('data: {"error"'):
                    return "stream_error"
        return "ok"
    except httpx2.HTTPError as e:
        return type(e).__name__


def rss_mib(pid: int) -> float:
    """Resident memory of a process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def soak(base_url: str, args: argparse.Namespace) -> Counter[str]:
    """Send every request, `concurrency` at a time, with the burst halfway; outcomes by kind."""
    rng = random.Random(args.seed)
    outcomes: Counter[str] = Counter()
    limits = httpx2.Limits(max_connections=args.concurrency + args.burst + 8)
    async with httpx2.AsyncClient(base_url=base_url, timeout=args.timeout, limits=limits) as client:
        jobs = iter(range(args.requests))
        burst_at = args.requests // 2 if args.burst_at is None else args.burst_at
        start = time.perf_counter()

        async def fire(kind: str, route: str, body: dict, stream: bool, disconnect: bool) -> None:
            outcome = await one(client, route, body, stream, disconnect)
            outcomes[f"{kind}:{outcome}"] += 1
            outcomes[outcome] += 1

        async def worker() -> None:
            for i in jobs:
                if i == burst_at:  # past --max-queued-requests: some must get 503, none may hang
                    burst = [request_mix(rng, args.max_tokens) for _ in range(args.burst)]
                    await asyncio.gather(*(fire("burst", r, b, False, False) for _, r, b in burst))
                kind, route, body = request_mix(rng, args.max_tokens)
                disconnect = rng.random() < args.disconnect_rate
                await fire(kind, route, body, disconnect or rng.random() < 0.4, disconnect)
                if i % 500 == 499:
                    totals = {k: v for k, v in outcomes.items() if ":" not in k}
                    print(f"  {time.perf_counter() - start:.0f} s: {i + 1} sent, outcomes {totals}", flush=True)

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return outcomes


def main() -> None:
    """Run the soak and print its report; exit 1 on a leak or a server error."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", help="a running server (http://host:port); default: start one")
    parser.add_argument("--server-pid", type=int, help="its pid, for RSS (default: the server this script starts)")
    parser.add_argument("--model", default=None, help="for the server this script starts (default: embedded)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-queued-requests", type=int, default=16, help="for the server this script starts")
    parser.add_argument("--burst", type=int, default=64, help="requests sent at once (default: halfway through)")
    parser.add_argument("--burst-at", type=int, help="how many requests are sent before the burst")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--disconnect-rate", type=float, default=0.2)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one request may take")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    command, base_url = None, (args.base_url or "").rstrip("/")
    if not args.base_url:
        command, base_url = exaone_serve(f"--max-num-seqs {args.concurrency} --max-queued-requests "
                                         f"{args.max_queued_requests} --max-model-len 2048"
                                         + (f" --model {shlex.quote(args.model)}" if args.model else ""))
    with started(command, base_url) as proc:
        pid = proc.pid if proc is not None else args.server_pid
        rss_start = rss_mib(pid) if pid else float("nan")
        start = time.perf_counter()
        outcomes = asyncio.run(soak(base_url, args))
        seconds = time.perf_counter() - start
        deadline = time.monotonic() + 60  # aborts of dropped streams land within a step or two
        session = requests.Session()
        while (stats := server_gauges(base_url, session))["running"] + stats["waiting"] \
                and time.monotonic() < deadline:
            time.sleep(0.5)
        rss_end = rss_mib(pid) if pid else float("nan")
        healthy = urllib.request.urlopen(f"{base_url}/health", timeout=30).status == 200
    by_kind = {k: v for k, v in outcomes.items() if ":" in k}
    totals = {k: v for k, v in outcomes.items() if ":" not in k}
    print(f"{totals.get('ok', 0) + sum(v for k, v in totals.items() if k != 'ok')} requests in {seconds:.0f} s "
          f"({args.requests} mixed + a burst of {args.burst}, concurrency {args.concurrency})")
    print("outcomes:", json.dumps(dict(sorted(totals.items()))))
    print("by kind: ", json.dumps(dict(sorted(by_kind.items()))))
    print(f"KV blocks still held: {stats['kv_cache_used_blocks']:.0f}; running {stats['num_requests_running']:.0f}, "
          f"waiting {stats['num_requests_waiting']:.0f}; /health ok: {healthy}")
    print(f"server RSS: {rss_start:.0f} MiB at start, {rss_end:.0f} MiB at end")
    bad = {k for k in totals if k not in ("ok", "disconnected", "503", "4xx")}
    if stats["kv_cache_used_blocks"] or bad or not healthy:
        sys.exit(f"FAIL: {', '.join(sorted(bad)) or 'blocks held'}")


if __name__ == "__main__":
    main()
