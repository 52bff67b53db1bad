"""Reasoning mode per request: the on/off switch, the thinking-token budget, and the reasoning/content split.

EXAONE 4.0 opens the thinking span in the prompt (`<think>\\n`), so in reasoning mode the output starts
inside it and closes it with `</think>\\n\\n`. Templates that know nothing of thinking (the embedded
SmolLM2) get the same `<think>\\n` appended to the prompt as a fallback, and then behave the same.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import torch
import xgrammar

from engine.core.sampling_params import LogitsProcessor
from engine.modes.chat_templates import THINK_END, THINK_START
from engine.sample.incremental import IncrementalProcessor
from engine.text.detokenizer import partial_tag_suffix

# After the end tag EXAONE 4.0 writes a blank line, then the answer; the forced sequence is both.
END_SEQUENCE = THINK_END + "\n\n"

# reasoning_effort -> (reasoning on, default thinking budget). "low"/"medium" cap thinking so that a
# reply arrives in seconds on a small GPU; "high" leaves it to max_tokens (and --max-thinking-tokens).
EFFORT: dict[str, tuple[bool, int | None]] = {
    "none": (False, None), "minimal": (True, 128), "low": (True, 512), "medium": (True, 2048), "high": (True, None)}


# The answer reserve: thinking ends early enough to leave max(floor, fraction * max_tokens) tokens for the answer.
DEFAULT_ANSWER_RESERVE = 0.25
ANSWER_RESERVE_FLOOR = 16


class ReasoningMode(NamedTuple):
    """Whether a request reasons, and its thinking-token budget (None: unbounded)."""

    enabled: bool
    budget: int | None


def _budget(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def _enable_thinking(kwargs: dict[str, Any] | None, name: str) -> bool | None:
    value = (kwargs or {}).get("enable_thinking")
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{name}.enable_thinking must be a boolean, got {value!r}")
    return value


def resolve_reasoning(*, reasoning: bool | None = None, chat_template_kwargs: dict[str, Any] | None = None,
                      reasoning_effort: str | None = None, thinking_token_budget: int | None = None,
                      thinking_budget: int | None = None, default_template_kwargs: dict[str, Any] | None = None,
                      max_thinking_tokens: int | None = None) -> ReasoningMode:
    """Decide a request's mode. Switch precedence: `reasoning`, then `chat_template_kwargs.enable_thinking`,
    then `reasoning_effort`, then the server's default template kwargs, else off. Budget: the request's
    `thinking_token_budget` (alias `thinking_budget`), else the effort's default, capped by the server's
    `max_thinking_tokens`. Raises ValueError naming the offending field."""
    if reasoning is not None and not isinstance(reasoning, bool):
        raise ValueError(f"reasoning must be a boolean, got {reasoning!r}")
    if reasoning_effort is not None and reasoning_effort not in EFFORT:
        raise ValueError(f"reasoning_effort must be one of {', '.join(EFFORT)}, got {reasoning_effort!r}")
    budget = _budget(thinking_token_budget, "thinking_token_budget")
    alias = _budget(thinking_budget, "thinking_budget")
    if budget is not None and alias is not None and budget != alias:
        raise ValueError("thinking_token_budget and thinking_budget disagree; send one of them")
    cap = _budget(max_thinking_tokens, "max_thinking_tokens")
    effort_on, effort_budget = EFFORT.get(reasoning_effort or "", (None, None))

    for choice in (reasoning, _enable_thinking(chat_template_kwargs, "chat_template_kwargs"), effort_on,
                   _enable_thinking(default_template_kwargs, "default_chat_template_kwargs")):
        if choice is not None:
            enabled = choice
            break
    else:
        enabled = False
    if not enabled:
        return ReasoningMode(False, None)
    budget = budget if budget is not None else alias if alias is not None else effort_budget
    if cap is not None:
        budget = cap if budget is None else min(budget, cap)
    return ReasoningMode(True, budget)


class ThinkingLimits(NamedTuple):
    """When one request's thinking is cut: a token budget (and why it is that), a wall-clock deadline."""

    budget: int | None  # thinking tokens, the forced end sequence excluded
    budget_reason: str  # "budget" (asked or capped) or "answer_reserve" (what max_tokens leaves)
    deadline: float | None  # time.monotonic() seconds


def thinking_limits(mode: ReasoningMode, max_tokens: int | None, forced_length: int, *,
                    reserve_fraction: float = DEFAULT_ANSWER_RESERVE, reserve: int | None = None,
                    deadline_ms: int | None = None, arrival: float | None = None) -> ThinkingLimits | None:
    """The limits of a reasoning request, or None when nothing cuts its thinking.

    With max_tokens set, thinking may use what is left after the answer reserve (the request's `reserve`
    tokens, else max(ANSWER_RESERVE_FLOOR, reserve_fraction * max_tokens)) and the forced end sequence.
    The deadline counts from `arrival` (now when not given). Raises ValueError naming a bad field."""
    if not mode.enabled:
        return None
    reserve = _budget(reserve, "reasoning_answer_reserve")
    deadline_ms = _budget(deadline_ms, "thinking_deadline_ms")
    budget, reason = mode.budget, "budget"
    if max_tokens is not None:
        keep = reserve
        if keep is None:
            keep = max(ANSWER_RESERVE_FLOOR, math.ceil(reserve_fraction * max_tokens)) if reserve_fraction else 0
        room = max(0, max_tokens - keep - forced_length) if keep else None
        if room is not None and (budget is None or room < budget):
            budget, reason = room, "answer_reserve"
    deadline = None
    if deadline_ms is not None:
        deadline = (time.monotonic() if arrival is None else arrival) + deadline_ms / 1000
    if budget is None and deadline is None:
        return None
    return ThinkingLimits(budget, reason, deadline)


@dataclass(frozen=True)
class ReasoningConfig:
    """Per-model facts the reasoning pieces need: tags, the forced end sequence, EOS ids, token bytes."""

    end_sequence_ids: tuple[int, ...]
    eos_token_ids: frozenset[int]
    # Raw bytes of every token id (model vocab, padding included): lets per-step code find `</think>`
    # in the output however it was tokenized, without a tokenizer call.
    token_bytes: Sequence[bytes] = field(repr=False)
    tokenizer_info: xgrammar.TokenizerInfo = field(repr=False)
    encode: Callable[[str], list[int]] = field(repr=False)

    @classmethod
    def from_tokenizer(cls, hf_tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int]) -> ReasoningConfig:
        """Build once per model from its transformers tokenizer and the model's (padded) vocab size."""
        info = xgrammar.TokenizerInfo.from_huggingface(
            hf_tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(set(eos_token_ids)))
        encode = partial(hf_tokenizer.encode, add_special_tokens=False)
        # Special tokens are no text (the detokenizer drops them), so they can't count as an answer either.
        special = set(hf_tokenizer.all_special_ids)
        token_bytes = [b"" if i in special else data for i, data in enumerate(info.decoded_vocab)]
        return cls(
            end_sequence_ids=tuple(encode(END_SEQUENCE)), eos_token_ids=frozenset(eos_token_ids),
            token_bytes=token_bytes, tokenizer_info=info, encode=encode)

    def budget_processor_factory(self, budget: int | ThinkingLimits, message: str | None = None,
                                 made: list[ThinkingBudgetProcessor] | None = None) -> Callable[[], LogitsProcessor]:
        """A per-sample ThinkingBudgetProcessor factory; `message` is forced (verbatim) before the end sequence.

        `budget` is a token count or full ThinkingLimits; each processor made is appended to `made`
        (in sample order), so the caller can read afterwards whether and why thinking was cut."""
        limits = budget if isinstance(budget, ThinkingLimits) else ThinkingLimits(budget, "budget", None)
        if limits.budget is not None and limits.budget < 0:
            raise ValueError(f"thinking_token_budget must be a non-negative integer, got {limits.budget}")
        forced = (*(self.encode(message) if message else ()), *self.end_sequence_ids)

        def make() -> ThinkingBudgetProcessor:
            processor = ThinkingBudgetProcessor(self, limits, forced)
            if made is not None:
                made.append(processor)
            return processor

        return make


class ThinkingTracker:
    """Follows one sample's output through the thinking span, token by token, at the byte level."""

    def __init__(self, config: ReasoningConfig) -> None:
        self._bytes = config.token_bytes
        self._end = THINK_END.encode()
        self._rest = END_SEQUENCE[len(THINK_END):].encode()
        self._tail = b""  # the last bytes inside the span, enough to see an end tag split across tokens
        self.in_thinking = True  # reasoning-mode output starts inside the span the prompt opened
        self.thinking_tokens = 0  # tokens up to and including the end sequence
        self.has_answer = False  # a non-whitespace token after the span
        self.after = b""  # bytes after the end tag so far (until the answer starts)

    def feed(self, token_id: int) -> None:
        """Advance by one output token."""
        data = self._bytes[token_id] if token_id < len(self._bytes) else b""
        if self.in_thinking:
            self.thinking_tokens += 1
            buf = self._tail + data
            at = buf.find(self._end)
            if at < 0:
                self._tail = buf[-(len(self._end) - 1):]
                return
            self.in_thinking = False
            self.after = buf[at + len(self._end):]
        elif not self.has_answer:
            self.after += data
            if self._rest.startswith(self.after):
                self.thinking_tokens += 1  # still the blank line that belongs to the end sequence
        self.has_answer = self.has_answer or (not self.in_thinking and bool(self.after.strip()))


def count_reasoning_tokens(token_ids: Sequence[int], config: ReasoningConfig) -> int:
    """usage.completion_tokens_details.reasoning_tokens of a reasoning-mode output: its thinking span."""
    tracker = ThinkingTracker(config)
    for token in token_ids:
        if tracker.has_answer:
            break
        tracker.feed(token)
    return tracker.thinking_tokens


class ThinkingBudgetProcessor(IncrementalProcessor):
    """Forces the end of thinking once the budget's thinking tokens exist or the deadline has passed, then
    keeps EOS away until an answer token exists (also inside the span: a budgeted reply never ends without
    an answer). One per sample; `cut` says what ended its thinking ("budget", "answer_reserve", "deadline")."""

    def __init__(self, config: ReasoningConfig, limits: ThinkingLimits, forced: Sequence[int]) -> None:
        self._config = config
        self._limits = limits
        self._forced = tuple(forced)
        # an index tensor, moved to the logits' device once, so a step does not build one from a list
        self._eos = torch.tensor(sorted(config.eos_token_ids))
        super().__init__()

    def _reset(self) -> None:
        self.cut: str | None = None
        self._tracker = ThinkingTracker(self._config)
        self._forcing_from: int | None = None  # output index where forcing began

    def _advance(self, token: int) -> None:
        self._tracker.feed(token)

    def _snapshot(self) -> tuple[ThinkingTracker, str | None, int | None]:
        return copy.copy(self._tracker), self.cut, self._forcing_from

    def _restore(self, state: tuple[ThinkingTracker, str | None, int | None]) -> None:
        self._tracker, self.cut, self._forcing_from = state

    def mask(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        """Force the end sequence once a limit is hit; ban EOS until an answer exists."""
        tracker = self._tracker
        if tracker.in_thinking and self._forcing_from is None:
            self.cut = self._cut_reason(tracker.thinking_tokens)
            if self.cut is not None:
                self._forcing_from = len(output_ids)
        if self._forcing_from is not None and (step := len(output_ids) - self._forcing_from) < len(self._forced):
            logits.fill_(float("-inf"))
            logits[self._forced[step]] = 0.0
            return logits
        if not tracker.has_answer:
            self._eos = self._eos.to(logits.device)
            logits[self._eos] = float("-inf")
        return logits

    def _cut_reason(self, thinking_tokens: int) -> str | None:
        """Why thinking must end now, whichever limit comes first; None while it may go on."""
        budget, reason, deadline = self._limits
        if budget is not None and thinking_tokens >= budget:
            return reason
        if deadline is not None and time.monotonic() >= deadline:
            return "deadline"
        return None


class ReasoningParser:
    """Streaming splitter of output text into (reasoning, content); the tags never appear in either.

    Starts inside the thinking span when reasoning is on; a `<think>` from the model itself opens one.
    Partial tags at the end of a delta are held back; the blank line after `</think>` is dropped.
    """

    def __init__(self, enabled: bool) -> None:
        self.in_thinking = enabled
        self._start, self._end = THINK_START, THINK_END
        self._pending = ""  # text not yet assigned: possibly the start of a tag
        self._after_end = False  # right after `</think>`: leading whitespace is dropped

    def feed(self, delta: str) -> tuple[str, str]:
        """Take a text delta; return the (reasoning, content) text now certain."""
        return self._split(self._pending + delta, final=False)

    def finish(self) -> tuple[str, str]:
        """Flush what was held back at the end of the output."""
        return self._split(self._pending, final=True)

    def _split(self, text: str, final: bool) -> tuple[str, str]:
        reasoning: list[str] = []
        content: list[str] = []
        while text:
            # In reasoning a stray `<think>` is dropped; in content a stray `</think>` is.
            tags = (self._end, self._start) if self.in_thinking else (self._start, self._end)
            hits = [(at, tag) for tag in tags if (at := text.find(tag)) >= 0]
            if hits:
                at, tag = min(hits)
                self._emit(text[:at], reasoning, content)
                text = text[at + len(tag):]
                if tag == tags[0]:
                    self.in_thinking = not self.in_thinking
                    self._after_end = not self.in_thinking
                continue
            keep = 0 if final else max(partial_tag_suffix(text, tag) for tag in tags)
            self._emit(text[:len(text) - keep], reasoning, content)
            text = text[len(text) - keep:]
            break
        self._pending = text
        return "".join(reasoning), "".join(content)

    def _emit(self, text: str, reasoning: list[str], content: list[str]) -> None:
        if self.in_thinking:
            reasoning.append(text)
            return
        if self._after_end:
            text = text.lstrip()
            self._after_end = not text
        content.append(text)


def split_reasoning(text: str, enabled: bool) -> tuple[str, str]:
    """(reasoning, content) of a whole output: one feed, then finish."""
    parser = ReasoningParser(enabled)
    reasoning, content = parser.feed(text)
    rest_reasoning, rest_content = parser.finish()
    return reasoning + rest_reasoning, content + rest_content
