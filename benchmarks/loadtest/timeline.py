"""One request's timeline, read from its SSE stream as it arrives, and the latencies derived from it.

Times are seconds since the start of the run. A chunk's token count comes from its `logprobs` entries
(exact, one per token) when the stream has them; otherwise usage's completion tokens are spread over the
chunks that carry text, in proportion to their length (marked `token_counts: "estimated"`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class ToolCall:
    """One streamed tool call, its pieces joined."""

    name: str = ""
    arguments: str = ""


@dataclass
class RequestRecord:
    """Everything measured about one request: its timeline, what came back and what it counted as."""

    id: int
    scenario: str
    turn: int = 1
    status: str = "ok"  # ok | error | not_asked | cancelled
    scheduled: float | None = None  # open loop: when the arrival process said to send
    sent: float | None = None
    first_byte: float | None = None
    first_reasoning: float | None = None
    first_content: float | None = None
    first_tool_call: float | None = None
    end: float | None = None  # the stream closed ([DONE])
    # one entry per chunk that carried tokens: [arrival time, tokens, characters]
    chunks: list[list[float]] = field(default_factory=list)
    token_counts: str = "logprobs"
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: str | None = None
    content: str = ""
    reasoning_chars: int = 0
    tool_calls: list[ToolCall] = field(default_factory=list)
    valid: bool | None = None  # tool-call arguments / JSON output valid against the schema
    not_asked: str | None = None  # which extension the target lacks

    def to_json(self) -> dict[str, Any]:
        """The JSONL form, with the derived metrics beside the raw timeline."""
        return {**asdict(self), "metrics": derive(self)}


class StreamReader:
    """Feeds the bytes of an SSE response into a RequestRecord, stamping each event with its arrival time."""

    def __init__(self, record: RequestRecord) -> None:
        self.record = record
        self._buffer = b""
        self._chunk_logprobs = False
        self._calls: dict[int, ToolCall] = {}
        self.done = False

    def feed(self, data: bytes, now: float) -> None:
        """Take the bytes of one read from the socket, received at `now`."""
        r = self.record
        if r.first_byte is None and data:
            r.first_byte = now
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            line = line.strip()
            if line.startswith(b"data:"):
                self._event(line[5:].strip(), now)

    def _event(self, payload: bytes, now: float) -> None:
        if payload == b"[DONE]":
            self.done = True
            return
        event = json.loads(payload)
        r = self.record
        if "error" in event and not event.get("choices"):
            error = event["error"]
            r.error = error.get("message", str(error)) if isinstance(error, dict) else str(error)
            return
        if event.get("usage"):
            r.usage = event["usage"]
        for choice in event.get("choices") or []:
            self._choice(choice, now)

    def _choice(self, choice: dict[str, Any], now: float) -> None:
        r = self.record
        delta = choice.get("delta") or {}
        reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
        content = delta.get("content") or ""
        calls = delta.get("tool_calls") or []
        chars = len(reasoning) + len(content)
        for call in calls:
            known = self._calls.setdefault(call.get("index", 0), ToolCall())
            function = call.get("function") or {}
            known.name += function.get("name") or ""
            known.arguments += function.get("arguments") or ""
            chars += len(function.get("name") or "") + len(function.get("arguments") or "")
        if reasoning and r.first_reasoning is None:
            r.first_reasoning = now
        if content and r.first_content is None:
            r.first_content = now
        if calls and r.first_tool_call is None:
            r.first_tool_call = now
        r.content += content
        r.reasoning_chars += len(reasoning)
        logprobs = (choice.get("logprobs") or {}).get("content")
        if logprobs is not None:
            self._chunk_logprobs = True
        tokens = len(logprobs or [])
        if tokens or chars:
            r.chunks.append([now, tokens, chars])
        if choice.get("finish_reason"):
            r.finish_reason = choice["finish_reason"]

    def finish(self, now: float) -> None:
        """The stream closed: settle token counts and tool calls."""
        r = self.record
        r.end = now
        r.tool_calls = [self._calls[i] for i in sorted(self._calls)]
        if not self._chunk_logprobs:
            r.token_counts = "estimated"
            total = (r.usage or {}).get("completion_tokens")
            spread_tokens(r.chunks, total)
        r.chunks = [c for c in r.chunks if c[1] > 0]


def spread_tokens(chunks: list[list[float]], total: int | None) -> None:
    """Give each text chunk at least one token and share the rest of `total` by characters (largest remainder)."""
    if not chunks:
        return
    extra = max(0, (total or len(chunks)) - len(chunks))
    chars = np.array([max(c[2], 1) for c in chunks], dtype=float)
    share = extra * chars / chars.sum()
    counts = np.floor(share).astype(int)
    for i in np.argsort(-(share - counts), kind="stable")[: extra - counts.sum()]:
        counts[i] += 1
    for chunk, count in zip(chunks, counts, strict=True):
        chunk[1] = 1 + int(count)


def token_gaps(chunks: list[list[float]], first_token: float) -> tuple[list[float], list[float]]:
    """(per-token ITL, per-chunk ITL). A chunk of k tokens after a gap g adds k gaps of g/k; the tokens
    that arrive with the first one add gaps of 0, so the mean per-token gap is (last - first) / (n - 1)."""
    per_token: list[float] = []
    per_chunk: list[float] = []
    previous = first_token
    for i, (t, k, _) in enumerate(chunks):
        k = int(k)
        if i == 0:
            per_token += [0.0] * (k - 1)
        else:
            gap = t - previous
            per_chunk.append(gap)
            per_token += [gap / k] * k
        previous = t
    return per_token, per_chunk


def derive(r: RequestRecord) -> dict[str, Any]:
    """TTFT, TTFO, reasoning time, TPOT, E2E, schedule lag, ITLs and token counts of one finished request."""
    if r.sent is None or r.end is None or r.status != "ok":
        return {}
    first = [t for t in (r.first_reasoning, r.first_content, r.first_tool_call) if t is not None]
    if r.chunks:
        first.append(r.chunks[0][0])
    ttft = min(first) - r.sent if first else None
    answers = [t for t in (r.first_content, r.first_tool_call) if t is not None]
    ttfo = min(answers) - r.sent if answers else None
    tokens = int(sum(c[1] for c in r.chunks))
    e2e = r.end - r.sent
    per_token, per_chunk = token_gaps(r.chunks, r.sent + ttft) if ttft is not None else ([], [])
    out: dict[str, Any] = {
        "ttft": ttft,
        "ttfo": ttfo,
        "reasoning_time": (ttfo if ttfo is not None else e2e) - ttft if r.first_reasoning is not None else None,
        "e2e": e2e,
        "tpot": (e2e - ttft) / (tokens - 1) if ttft is not None and tokens > 1 else None,
        "schedule_lag": r.sent - r.scheduled if r.scheduled is not None else 0.0,
        "output_tokens": tokens,
        "itl": per_token,
        "itl_chunk": per_chunk,
    }
    if r.usage:
        out["prompt_tokens"] = r.usage.get("prompt_tokens")
        out["usage_completion_tokens"] = r.usage.get("completion_tokens")
        details = r.usage.get("completion_tokens_details") or {}
        out["reasoning_tokens"] = details.get("reasoning_tokens")
    return out
