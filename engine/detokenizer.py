"""Incremental detokenization with stop strings: token ids in, stable text deltas out."""

from __future__ import annotations

from tokenizers.decoders import DecodeStream

from engine.sampling_params import SamplingParams
from engine.tokenizer import Tokenizer

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
    O(1) in the output length: tokenizers' DecodeStream decodes only a small window of tokens
    (the prefix/read offset technique) and stop strings are searched only near the end.
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
        self._num_checked = 0  # characters of _text already searched for stop strings
        self._max_stop_len = max((len(s) for s in params.stop), default=0)
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
        """Cut at the earliest stop string, or hold back a possible stop prefix; return the new text."""
        stop = self._find_stop()
        if stop is not None:
            index, string = stop
            self._text = self._text[: index + len(string) if self.params.include_stop_str_in_output else index]
            self._stop_reason = string
            end = len(self._text)
        else:
            self._num_checked = len(self._text)
            held = 0 if final or self.params.include_stop_str_in_output else self._partial_stop_len()
            end = max(self._num_emitted, len(self._text) - held)
        delta = self._text[self._num_emitted : end]
        self._num_emitted = end
        return delta

    def _find_stop(self) -> tuple[int, str] | None:
        """(index, string) of the earliest stop string in the text not fully searched before."""
        if not self._max_stop_len:
            return None
        # A match starting earlier would have ended inside text that was already searched.
        start = max(0, self._num_checked - self._max_stop_len + 1)
        best: tuple[int, str] | None = None
        for string in self.params.stop:
            index = self._text.find(string, start)
            if index != -1 and (best is None or index < best[0]):
                best = (index, string)
        return best

    def _partial_stop_len(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of some stop string."""
        return max((partial_tag_suffix(self._text, stop) for stop in self.params.stop), default=0)


def partial_tag_suffix(text: str, tag: str) -> int:
    """Length of the longest proper prefix of `tag` that `text` ends with."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
