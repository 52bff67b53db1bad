"""engine.text.detokenizer: UTF-8-safe streaming deltas, stop strings across token boundaries, flush."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from engine.core.sampling_params import SamplingParams
from engine.model.gguf_loader import gguf_tokenizer_dir
from engine.text.detokenizer import IncrementalDetokenizer, StopStringMatcher
from engine.text.tokenizer import Tokenizer

MULTIBYTE = "안녕하세요 세계! 🎉👨‍👩‍👧 héllo wörld, 日本語のテキスト. 반갑습니다 🙂"
SENTENCE = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def tokenizer(default_gguf: Path) -> Tokenizer:
    return Tokenizer(gguf_tokenizer_dir(default_gguf))


def stream(tokenizer: Tokenizer, ids: list[int], prompt: list[int] | None = None,
           **params: object) -> tuple[IncrementalDetokenizer, list[str]]:
    """Feed ids one at a time; returns the detokenizer and the deltas of each update."""
    detok = IncrementalDetokenizer(tokenizer, prompt or [], SamplingParams(**params))
    return detok, [detok.update([i]) for i in ids]


def assert_never_retracted(deltas: list[str], final: str) -> None:
    """Every cumulative output is a prefix of the final text: nothing emitted is taken back."""
    emitted = ""
    for delta in deltas:
        emitted += delta
        assert final.startswith(emitted), (emitted, final)


@pytest.mark.parametrize("prompt", ["", "Say hi: "])
def test_multibyte_characters_are_never_split(tokenizer: Tokenizer, prompt: str) -> None:
    ids = tokenizer.encode(MULTIBYTE)
    # The text really has characters spread over several byte-level tokens.
    assert any("\ufffd" in tokenizer.decode(ids[:k]) for k in range(1, len(ids)))
    detok, deltas = stream(tokenizer, ids, tokenizer.encode(prompt))
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) + detok.flush() == tokenizer.decode(ids) == MULTIBYTE
    assert detok.output_text == MULTIBYTE and not detok.finished


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_random_ids_concatenate_to_the_full_decode(tokenizer: Tokenizer, skip_special_tokens: bool) -> None:
    rng = random.Random(0)
    for _ in range(100):
        # Low ids are single bytes and special tokens, so many sequences hold invalid UTF-8.
        ids = [rng.randrange(600) if rng.random() < 0.6 else rng.randrange(tokenizer.vocab_size)
               for _ in range(rng.randint(1, 30))]
        prompt = [rng.randrange(tokenizer.vocab_size) for _ in range(rng.randint(0, 8))]
        detok, deltas = stream(tokenizer, ids, prompt, skip_special_tokens=skip_special_tokens)
        assert all(not d.endswith("\ufffd") for d in deltas)
        text = "".join(deltas) + detok.flush()
        assert text == tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def test_first_token_keeps_its_leading_space(tokenizer: Tokenizer) -> None:
    _, deltas = stream(tokenizer, tokenizer.encode(" world"), tokenizer.encode("Hello"))
    assert "".join(deltas) == " world"


def test_special_tokens_follow_skip_special_tokens(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("Hi<|im_end|>")
    kept, deltas = stream(tokenizer, ids, skip_special_tokens=False)
    assert "".join(deltas) + kept.flush() == "Hi<|im_end|>"
    skipped, deltas = stream(tokenizer, ids)
    assert "".join(deltas) + skipped.flush() == "Hi"


@pytest.mark.parametrize(("text", "stop", "expected"), [
    (SENTENCE, "n fox ju", "The quick brow"),  # spans " brown", " fox", " jumps"
    (SENTENCE, "The", ""),  # at the very start
    (SENTENCE, ".", "The quick brown fox jumps over the lazy dog"),  # the last token
    (MULTIBYTE, "세계", "안녕하세요 "),  # inside multi-byte tokens
    (MULTIBYTE, "👨‍👩", "안녕하세요 세계! 🎉"),
])
def test_stop_string_across_tokens_is_cut_and_never_emitted(
        tokenizer: Tokenizer, text: str, stop: str, expected: str) -> None:
    ids = tokenizer.encode(text)
    detok, deltas = stream(tokenizer, ids, stop=[stop])
    assert detok.finished and detok.stop_reason == stop
    assert "".join(deltas) == detok.output_text == expected
    assert_never_retracted(deltas, expected)
    assert detok.update(ids[:3]) == "" and detok.flush() == ""
    assert detok.output_text == expected


def test_stop_string_included_when_asked(tokenizer: Tokenizer) -> None:
    detok, deltas = stream(tokenizer, tokenizer.encode(SENTENCE), stop=["n fox ju"], include_stop_str_in_output=True)
    assert "".join(deltas) == detok.output_text == "The quick brown fox ju"
    assert detok.stop_reason == "n fox ju"


def test_first_stop_string_to_complete_wins(tokenizer: Tokenizer) -> None:
    # "quick brown fox jumps" starts earlier, but "fox" is complete first; its prefix was held back.
    detok, deltas = stream(tokenizer, tokenizer.encode(SENTENCE), stop=["lazy", "quick brown fox jumps", "fox"])
    assert "".join(deltas) == "The quick brown "
    assert_never_retracted(deltas, "The quick brown ")
    assert detok.stop_reason == "fox"


def test_stop_strings_found_when_many_tokens_arrive_at_once(tokenizer: Tokenizer) -> None:
    detok = IncrementalDetokenizer(tokenizer, [], SamplingParams(stop=["over", "fox"]))
    assert detok.update(tokenizer.encode(SENTENCE)) == "The quick brown "
    assert detok.stop_reason == "fox"


def test_possible_stop_prefix_is_held_back_until_flush(tokenizer: Tokenizer) -> None:
    detok, deltas = stream(tokenizer, tokenizer.encode("Hello wor"), stop=["world", "Helium"])
    assert "".join(deltas) == detok.output_text == "Hello "
    assert detok.flush() == "wor"
    assert detok.output_text == "Hello wor" and not detok.finished


def test_false_alarm_prefix_is_released(tokenizer: Tokenizer) -> None:
    detok, deltas = stream(tokenizer, tokenizer.encode("Hello wordy world"), stop=["worlds"])
    assert "".join(deltas) == "Hello wordy "
    assert detok.flush() == "world"


def test_stream_restarts_after_an_invalid_prefix_error(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(MULTIBYTE)
    detok = IncrementalDetokenizer(tokenizer, [], SamplingParams())
    real = detok._stream

    class Failing:
        """Fails once in the middle of a split character, as tokenizers does on a changed prefix."""

        def step(self, backend: object, token_id: int) -> str | None:
            if len(detok.token_ids) == 5:
                raise Exception("Invalid prefix encountered")
            return real.step(backend, token_id)

    detok._stream = Failing()
    deltas = [detok.update([i]) for i in ids]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) + detok.flush() == MULTIBYTE


def first_stop(text: str, stops: list[str]) -> tuple[int, str] | None:
    """Reference: (end, stop) at the first position where some stop has completed (the longest there)."""
    for end in range(1, len(text) + 1):
        done = [s for s in stops if text[:end].endswith(s)]
        if done:
            return end, max(done, key=len)
    return None


def test_stop_matcher_agrees_with_a_brute_force_search_however_the_text_is_cut() -> None:
    rng = random.Random(0)
    for _ in range(300):
        text = "".join(rng.choice("aab") for _ in range(rng.randint(0, 40)))
        stops = ["".join(rng.choice("ab") for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 4))]
        matcher, fed, hit = StopStringMatcher(stops), 0, None
        while fed < len(text) and hit is None:
            piece = text[fed:fed + rng.randint(1, 5)]
            found = matcher.feed(piece)
            hit = (fed + found[0], found[1]) if found else None
            fed += len(piece)
        assert hit == first_stop(text, stops), (text, stops)
        if hit is None:  # what is held back: the longest tail that could still become a stop
            assert matcher.partial_len == max(
                (n for s in stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)


def test_stop_strings_are_ignored_before_min_tokens(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("a b a b a b a b")
    detok, deltas = stream(tokenizer, ids, stop=[" b"], min_tokens=4)
    assert detok.finished and "".join(deltas) == tokenizer.decode(ids[:3]) == "a b a"  # the 4th token stops
    detok, deltas = stream(tokenizer, ids, stop=[" b"])
    assert "".join(deltas) == "a"
