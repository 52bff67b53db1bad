"""What the engine hands back: per-request outputs, as deltas while streaming."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenLogprob:
    """Log-probability of a sampled token, and the top alternatives when asked for."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class CompletionOutput:
    """One sample of a request: new (or, offline, all) tokens, text and logprobs."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: str | int | None = None  # the stop string or stop token id that ended it

    def extend(self, delta: CompletionOutput) -> None:
        """Append a streamed delta to this accumulated output."""
        self.text += delta.text
        self.token_ids.extend(delta.token_ids)
        if delta.logprobs is not None:
            self.logprobs = (self.logprobs or []) + delta.logprobs
        self.finish_reason, self.stop_reason = delta.finish_reason, delta.stop_reason


@dataclass
class RequestMetrics:
    """Engine-side timestamps of a request (time.monotonic seconds)."""

    arrival_time: float
    first_scheduled_time: float | None = None  # when its prefill first entered a batch


@dataclass
class RequestOutput:
    """The state of one request after a step."""

    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics | None = None
    # Sent once, with the request's first output, when SamplingParams.prompt_logprobs is set.
    prompt_logprobs: list[TokenLogprob | None] | None = None
    num_cached_tokens: int = 0  # prompt tokens whose K/V came from the prefix cache
