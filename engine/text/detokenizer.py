"""Incremental detokenization with stop strings: token ids in, stable text deltas out."""

from __future__ import annotations

from tokenizers.decoders import DecodeStream

from engine.core.sampling_params import SamplingParams
from engine.text.tokenizer import Tokenizer

# Prompt tokens that prime the decode stream, so the first output token decodes as it would
# after its real left context (leading spaces, merges, a character split across the boundary).
_PROMPT_CONTEXT = 6
# Tokens of left context when decoding pending tokens directly (flush, stream errors).
_TAIL_CONTEXT = 6
# DecodeStream raises a plain Exception with this message when decoding a new token changed
# text it already returned (some non-byte-level decoders do); we then decode directly.
_INVALID_PREFIX = "Invalid prefix"


class IncrementalDetokenizer:
    """Turns one sequence's output tokens into text deltas, holding back what is not yet stable.

    Text is held back while its last character is incomplete (a multi-byte character split across
    byte-level tokens) and while its tail could still grow into a stop string. Each update costs
    O(new text): tokenizers' DecodeStream decodes only a small window of tokens (the prefix/read
    offset technique) and StopStringMatcher reads each character once, whatever the stop lengths.
    Stop strings are ignored until the output has min_tokens tokens (as vLLM does).
    """

    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self.tokenizer = tokenizer
        self.params = params
        self.token_ids: list[int] = []
        self._backend = tokenizer.hf.backend_tokenizer
        self._prompt_tail = self._clean_suffix(prompt_token_ids)
        self._stream = DecodeStream(ids=self._prompt_tail, skip_special_tokens=params.skip_special_tokens)
        self._num_decoded = 0  # output tokens whose text is in _text
        self._text = ""  # decoded output text; cut at the stop string once one is found
        self._num_emitted = 0  # characters of _text already returned
        self._num_checked = 0  # characters of _text already fed to the stop matcher
        self._stops = StopStringMatcher(params.stop) if params.stop else None
        self._stop_reason: str | None = None

    def _clean_suffix(self, prompt_token_ids: list[int]) -> list[int]:
        """The longest short prompt suffix that decodes without U+FFFD.

        A primed stream whose text ends in U+FFFD (a prompt ending mid-character) re-emits the
        whole primer; a suffix starting mid-character would carry a stray U+FFFD into the context.
        """
        for size in range(min(_PROMPT_CONTEXT, len(prompt_token_ids)), 0, -1):
            suffix = list(prompt_token_ids[-size:])
            if "\ufffd" not in self._backend.decode(suffix, skip_special_tokens=self.params.skip_special_tokens):
                return suffix
        return []

    @property
    def finished(self) -> bool:
        """True once a stop string was found; later updates return nothing."""
        return self._stop_reason is not None

    @property
    def stop_reason(self) -> str | None:
        """The stop string that ended the output, if any."""
        return self._stop_reason

    @property
    def output_text(self) -> str:
        """All text returned so far (by update and flush)."""
        return self._text[: self._num_emitted]

    def update(self, new_token_ids: list[int]) -> str:
        """Add sampled tokens; returns the text that became stable (possibly empty)."""
        if self.finished:
            return ""
        for token_id in new_token_ids:
            self.token_ids.append(token_id)
            piece = self._step(token_id)
            if piece is not None:
                self._text += piece
                self._num_decoded = len(self.token_ids)
        return self._emit(final=False)

    def flush(self) -> str:
        """Everything held back, for a sequence that ended for another reason (eos, length, abort)."""
        if self.finished:
            return ""
        if self._num_decoded < len(self.token_ids):
            self._text += self._decode_pending()
        return self._emit(final=True)

    def _step(self, token_id: int) -> str | None:
        """Text completed by `token_id`, or None while the stream waits for more tokens."""
        try:
            return self._stream.step(self._backend, token_id)
        except Exception as exc:
            if _INVALID_PREFIX not in str(exc):
                raise
        # Restart the stream just before the undecoded tokens and feed them again, as vLLM does.
        start = self._num_decoded
        self._stream = DecodeStream(ids=self._context(start), skip_special_tokens=self.params.skip_special_tokens)
        return self._stream.step(self._backend, self.token_ids[start:])

    def _context(self, start: int) -> list[int]:
        """The few tokens (output, then prompt) left of output position `start`."""
        context = self.token_ids[max(0, start - _TAIL_CONTEXT) : start]
        if len(context) < _TAIL_CONTEXT:
            context = [*self._prompt_tail, *context][-_TAIL_CONTEXT:]
        return context

    def _decode_pending(self) -> str:
        """Text of the output tokens not yet decoded, decoded after a few tokens of left context."""
        start = self._num_decoded
        context, skip = self._context(start), self.params.skip_special_tokens
        prefix = self._backend.decode(context, skip_special_tokens=skip)
        full = self._backend.decode([*context, *self.token_ids[start:]], skip_special_tokens=skip)
        self._num_decoded = len(self.token_ids)
        return full[len(prefix) :]

    def _emit(self, final: bool) -> str:
        """Cut at the first stop string to complete, or hold back a possible stop prefix; return the new text."""
        stop = self._find_stop()
        if stop is not None:
            end, string = stop
            self._text = self._text[: end if self.params.include_stop_str_in_output else end - len(string)]
            self._stop_reason = string
            end = len(self._text)
        else:
            held = 0
            if self._stops is not None and not (final or self.params.include_stop_str_in_output):
                held = self._stops.partial_len
            end = max(self._num_emitted, len(self._text) - held)
        delta = self._text[self._num_emitted : end]
        self._num_emitted = end
        return delta

    def _find_stop(self) -> tuple[int, str] | None:
        """(end index in the text, string) of the first stop string completed by the text not yet searched."""
        if self._stops is None:
            return None
        start, self._num_checked = self._num_checked, len(self._text)
        hit = self._stops.feed(self._text[start:], active=len(self.token_ids) >= self.params.min_tokens)
        return None if hit is None else (start + hit[0], hit[1])


class StopStringMatcher:
    """Finds stop strings in text fed piece by piece; each character is read once (KMP per string).

    A stop string of any length costs O(1) amortised per new character, so a long stop cannot
    slow the step loop down for the whole batch.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self._failure = [_failure(s) for s in stops]
        self._matched = [0] * len(stops)  # characters of each stop the text currently ends with

    @property
    def partial_len(self) -> int:
        """Length of the longest tail of the text fed so far that is a proper prefix of some stop string."""
        return max(self._matched, default=0)

    def feed(self, text: str, active: bool = True) -> tuple[int, str] | None:
        """Read `text`; (end offset in `text`, stop) of the first stop to complete (the longest on a tie).

        With active=False completed stops are passed over (before min_tokens)."""
        stops, failure, matched = self.stops, self._failure, self._matched
        for pos, ch in enumerate(text):
            hit: str | None = None
            for k, stop in enumerate(stops):
                q = matched[k]
                while q and stop[q] != ch:
                    q = failure[k][q - 1]
                if stop[q] == ch:
                    q += 1
                if q == len(stop):
                    if hit is None or len(stop) > len(hit):
                        hit = stop
                    q = failure[k][q - 1]
                matched[k] = q
            if hit is not None and active:
                return pos + 1, hit
        return None


def _failure(pattern: str) -> list[int]:
    """KMP failure function: for each prefix, the length of its longest proper border."""
    table = [0] * len(pattern)
    k = 0
    for i in range(1, len(pattern)):
        while k and pattern[i] != pattern[k]:
            k = table[k - 1]
        if pattern[i] == pattern[k]:
            k += 1
        table[i] = k
    return table


def partial_tag_suffix(text: str, tag: str) -> int:
    """Length of the longest proper prefix of `tag` that `text` ends with."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
