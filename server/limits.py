"""Per-request bounds, so that no request can make the server do unbounded work; each is a `serve` flag.

Defaults follow OpenAI where it publishes a limit (4 stop sequences, 20 top logprobs, 128 tools).
Heavy preprocessing (template rendering, tokenisation, schema checks, grammar compilation) runs in a
small worker pool off the event loop, under a time limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec

from server.errors import bad_request

T = TypeVar("T")

MAX_TOP_LOGPROBS = 20  # OpenAI's bound on top_logprobs (chat) and logprobs (completions)
MAX_JSON_DEPTH = 64  # nesting of free-form JSON values (schemas, template kwargs, tool arguments)


@dataclass
class RequestLimits:
    """What one request may ask for; larger asks get a 400 naming the field and the flag."""

    max_n: int = 128  # --max-n (OpenAI: 128; never more than --max-num-seqs)
    max_stop_sequences: int = 4  # --max-stop-sequences
    max_prompts: int = 256  # --max-prompts-per-request (completions)
    max_tools: int = 128  # --max-tools
    max_schema_bytes: int = 64 << 10  # --max-schema-bytes: tools + response_format, as JSON
    preprocess_timeout: float = 10.0  # --preprocess-timeout, seconds
    preprocess_workers: int = 2  # --preprocess-workers
    _pool: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)

    def check_count(self, name: str, count: int, limit: int, flag: str) -> None:
        """400 when `count` items of `name` exceed `limit`."""
        if count > limit:
            raise bad_request(f"{name} has {count} entries; this server allows at most {limit} ({flag})", name)

    def check_stop(self, stop: str | list[str] | None) -> None:
        """400 past max_stop_sequences."""
        if isinstance(stop, list):
            self.check_count("stop", len(stop), self.max_stop_sequences, "--max-stop-sequences")

    def check_tools(self, tools: list[Any] | None, response_format: Any) -> None:
        """400 past max_tools, when tools + response_format are too large as JSON, or nest too deeply."""
        self.check_count("tools", len(tools or ()), self.max_tools, "--max-tools")
        given = {name: value for name, value in (("tools", tools), ("response_format", response_format))
                 if value is not None}
        size = sum(len(msgspec.json.encode(value)) for value in given.values())
        if size > self.max_schema_bytes:
            raise bad_request(f"{' + '.join(given)} take {size} bytes as JSON; this server allows at most "
                              f"{self.max_schema_bytes} (--max-schema-bytes)", next(iter(given)))
        for name, value in given.items():
            check_depth(value, name)

    def check_chat(self, messages: list[Any], tools: list[Any] | None, response_format: Any,
                   chat_template_kwargs: dict[str, Any] | None) -> None:
        """check_tools, and 400 when template kwargs or tool-call arguments in messages nest too deeply."""
        self.check_tools(tools, response_format)
        check_depth(chat_template_kwargs, "chat_template_kwargs")
        check_depth([c.function.arguments for m in messages for c in m.tool_calls or ()], "messages")

    async def run(self, what: str, work: Callable[[], T]) -> T:
        """Run `work` in the preprocessing pool; 400 if it takes longer than preprocess_timeout.

        A thread cannot be stopped: work past the limit finishes in the background, bounded by the
        size limits, and the pool's few workers bound how much of it can pile up.
        """
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.preprocess_workers, thread_name_prefix="exaone-preprocess")
        loop = asyncio.get_running_loop()
        started = asyncio.Event()

        def job() -> T:
            loop.call_soon_threadsafe(started.set)
            return work()

        future = loop.run_in_executor(self._pool, job)
        await started.wait()  # time spent queueing for a worker is not this request's doing
        try:
            return await asyncio.wait_for(future, self.preprocess_timeout)
        except TimeoutError:
            raise bad_request(f"{what} took longer than {self.preprocess_timeout:g} s "
                              "(--preprocess-timeout); simplify the request") from None


def check_depth(value: Any, name: str, limit: int = MAX_JSON_DEPTH) -> None:
    """400 when a decoded JSON value nests deeper than `limit` (deep values overflow recursive consumers)."""
    stack = [(msgspec.to_builtins(value), 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise bad_request(f"{name} nests deeper than {limit} levels", name)
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children)
