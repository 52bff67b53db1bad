"""Serving throughput: the prompts of benchmarks/throughput.py through HTTP, C concurrent streams.

    .venv/bin/python benchmarks/serving.py --concurrency 16        # starts `exaone-serve serve` itself
    .venv/bin/python benchmarks/serving.py --base-url http://127.0.0.1:8000/v1

Compare with `benchmarks/throughput.py --max-num-seqs C` (same prompts, same output length, greedy):
the difference is what HTTP, SSE and the asyncio front add to the engine.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import time

from loadtest.servers import exaone_serve, started
from openai import AsyncOpenAI
from throughput import chat_prompts


async def run(base_url: str, api_key: str, args: argparse.Namespace) -> tuple[int, float, float]:
    """(output tokens, seconds, median inter-token latency in s) for all prompts, at most `concurrency`
    streams at a time. Works against any OpenAI-compatible server (llama-server too)."""
    client = AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=2, timeout=3600)
    model = (await client.models.list()).data[0].id
    gate = asyncio.Semaphore(args.concurrency)

    async def one(messages: list[dict], max_tokens: int) -> tuple[int, float]:
        async with gate:
            stream = await client.chat.completions.create(
                model=model, messages=messages, max_tokens=max_tokens, temperature=0, stream=True,
                stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
            usage, chunks, first, last = 0, 0, 0.0, 0.0
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage.completion_tokens
                if chunk.choices and chunk.choices[0].delta.content:
                    last = time.perf_counter()
                    first, chunks = first or last, chunks + 1
            tokens = usage or chunks
            return tokens, (last - first) / max(tokens - 1, 1)

    prompts = chat_prompts(args.num_prompts)
    await asyncio.gather(*(one(p, 2) for p in prompts[:2]))  # warm-up, as throughput.py does
    start = time.perf_counter()
    results = await asyncio.gather(*(one(p, args.output_tokens) for p in prompts))
    return sum(t for t, _ in results), time.perf_counter() - start, statistics.median(i for _, i in results)


def main() -> None:
    """Print output tokens per second through HTTP."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", help="a running server; default: start one")
    parser.add_argument("--api-key", default="EMPTY")
    parser.add_argument("--model", default=None, help="for the server this script starts")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--max-num-batched-tokens", type=int, default=512)
    args = parser.parse_args()
    command, base_url = None, args.base_url
    if not args.base_url:
        command, server_url = exaone_serve(f"--max-num-seqs {args.concurrency} --max-num-batched-tokens "
                                           f"{args.max_num_batched_tokens}"
                                           + (f" --model {shlex.quote(args.model)}" if args.model else ""))
        base_url = f"{server_url}/v1"
    with started(command, base_url.removesuffix("/v1")):
        generated, seconds, itl = asyncio.run(run(base_url, args.api_key, args))
    print(f"http concurrency={args.concurrency}: {generated} tokens in {seconds:.1f} s = "
          f"{generated / seconds:.1f} output tok/s, median ITL {itl * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
