"""Reasoning mode: the switch and its precedence, prompts, the thinking budget on a tiny EXAONE, the splitter."""

import itertools
import time

import pytest
import torch
from fixtures_exaone import exaone_tokenizer

import engine.modes.reasoning as reasoning_module
from engine import LLM, SamplingParams
from engine.modes.chat_templates import render_chat_prompt, template_traits
from engine.modes.reasoning import (
    ANSWER_RESERVE_FLOOR,
    EFFORT,
    ReasoningConfig,
    ReasoningMode,
    ReasoningParser,
    ThinkingLimits,
    count_reasoning_tokens,
    resolve_reasoning,
    split_reasoning,
    thinking_limits,
)

ON, OFF = "[|assistant|]\n<think>\n", "[|assistant|]\n<think>\n\n</think>\n\n"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]


@pytest.fixture(scope="module")
def exaone_llm(exaone_model: str) -> LLM:
    return LLM(model=exaone_model, progress=False)


@pytest.fixture(scope="module")
def config(exaone_llm: LLM) -> ReasoningConfig:
    engine = exaone_llm.engine
    return ReasoningConfig.from_tokenizer(engine.tokenizer.hf, engine.model_config.vocab_size, engine.eos_token_ids)


WAYS = [  # (request fields, server default kwargs) -> reasoning on?
    ({}, None, False),
    ({"reasoning": True}, None, True),
    ({"reasoning": False}, {"enable_thinking": True}, False),
    ({"chat_template_kwargs": {"enable_thinking": True}}, None, True),
    ({"chat_template_kwargs": {"enable_thinking": False}}, {"enable_thinking": True}, False),
    ({"reasoning_effort": "none"}, {"enable_thinking": True}, False),
    ({"reasoning_effort": "low"}, None, True),
    ({"reasoning_effort": "high"}, None, True),
    ({}, {"enable_thinking": True}, True),
    ({"reasoning": True, "reasoning_effort": "none"}, None, True),  # the explicit flag wins
    ({"chat_template_kwargs": {"enable_thinking": False}, "reasoning_effort": "high"}, None, False),
]


@pytest.mark.parametrize(("fields", "defaults", "expected"), WAYS)
def test_every_way_of_asking_renders_the_right_generation_prompt(fields, defaults, expected):
    mode = resolve_reasoning(**fields, default_template_kwargs=defaults)
    assert mode.enabled is expected
    tokenizer = exaone_tokenizer()
    prompt = render_chat_prompt(tokenizer, MESSAGES, enable_thinking=mode.enabled)
    assert prompt.endswith(ON if expected else OFF)
    assert prompt.startswith("[|system|]\nBe brief.[|endofturn|]\n[|user|]\nHi?[|endofturn|]\n")


def test_budgets_effort_defaults_and_server_cap():
    assert resolve_reasoning(reasoning_effort="low") == (True, EFFORT["low"][1])
    assert resolve_reasoning(reasoning_effort="medium", thinking_budget=7) == (True, 7)
    assert resolve_reasoning(reasoning=True, thinking_token_budget=100, max_thinking_tokens=30) == (True, 30)
    assert resolve_reasoning(reasoning=True, max_thinking_tokens=30) == (True, 30)
    assert resolve_reasoning(reasoning=True) == (True, None)
    assert resolve_reasoning(reasoning=False, thinking_token_budget=5) == (False, None)


@pytest.mark.parametrize(("fields", "name"), [
    ({"thinking_token_budget": -1}, "thinking_token_budget"),
    ({"thinking_budget": -3}, "thinking_budget"),
    ({"max_thinking_tokens": -1}, "max_thinking_tokens"),
    ({"reasoning_effort": "extreme"}, "reasoning_effort"),
    ({"reasoning": "yes"}, "reasoning"),
    ({"chat_template_kwargs": {"enable_thinking": "on"}}, "chat_template_kwargs.enable_thinking"),
    ({"thinking_token_budget": 5, "thinking_budget": 6}, "thinking_budget"),
])
def test_bad_reasoning_fields_name_the_field(fields, name):
    with pytest.raises(ValueError, match=name):
        resolve_reasoning(**fields)


def test_template_without_thinking_gets_the_generic_fallback(default_gguf):
    from engine.model.loader import tokenizer_path
    from engine.text.tokenizer import Tokenizer

    hf = Tokenizer(tokenizer_path(default_gguf)).hf
    traits = template_traits(hf)
    assert not traits.thinking_aware and not traits.tools_aware
    on = render_chat_prompt(hf, MESSAGES, enable_thinking=True, traits=traits)
    off = render_chat_prompt(hf, MESSAGES, enable_thinking=False, traits=traits)
    assert on == off + "<think>\n" and off.endswith("<|im_start|>assistant\n")


def test_tool_turns_round_trip_through_the_exaone_template():
    messages = [
        {"role": "user", "content": "Weather in Seoul and Busan?"},
        {"role": "assistant", "content": None, "reasoning_content": "dropped", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Seoul"}'}},
            {"id": "b", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Busan"}}}]},
        {"role": "tool", "tool_call_id": "a", "content": "22C"},
        {"role": "tool", "tool_call_id": "b", "content": "25C"},
    ]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    prompt = render_chat_prompt(exaone_tokenizer(), messages, enable_thinking=False, tools=tools)
    assert '<tool>{"type": "function", "function": {"name": "get_weather"' in prompt.split("[|endofturn|]")[0]
    assert ("[|assistant|]\n<think>\n\n</think>\n\n"
            '<tool_call>{"name": "get_weather", "arguments": {"city": "Seoul"}}</tool_call>\n'
            '<tool_call>{"name": "get_weather", "arguments": {"city": "Busan"}}</tool_call>[|endofturn|]\n'
            '[|tool|]\n<tool_result>{"result": "22C"}</tool_result>\n'
            '<tool_result>{"result": "25C"}</tool_result>[|endofturn|]\n' + OFF) in prompt
    assert "dropped" not in prompt


def _sublist_at(haystack: list[int], needle: tuple[int, ...]) -> int:
    return next((i for i in range(len(haystack) - len(needle) + 1)
                 if tuple(haystack[i:i + len(needle)]) == needle), -1)


@pytest.mark.parametrize("budget", [0, 1, 8, 64])
def test_thinking_budget_forces_the_end_and_an_answer(exaone_llm, config, budget):
    prompt = exaone_llm.tokenizer.encode(render_chat_prompt(
        exaone_llm.tokenizer.hf, MESSAGES, enable_thinking=True), add_special_tokens=False)
    forced = len(config.end_sequence_ids)
    params = [SamplingParams(max_tokens=budget + forced + 16, temperature=1.0, seed=seed,
                             logits_processor_factories=[config.budget_processor_factory(budget)])
              for seed in range(3)]
    for out in exaone_llm.generate(prompt_token_ids=[prompt] * len(params), sampling_params=params):
        sample = out.outputs[0]
        reasoning_tokens = count_reasoning_tokens(sample.token_ids, config)
        assert reasoning_tokens <= budget + forced
        assert _sublist_at(sample.token_ids, config.end_sequence_ids) == reasoning_tokens - forced
        assert "</think>\n\n" in sample.text
        reasoning, content = split_reasoning(sample.text, enabled=True)
        assert content.strip(), sample.text  # an answer always follows
        assert "<think>" not in reasoning + content and "</think>" not in reasoning + content


def test_budget_message_comes_before_the_end_and_streaming_agrees(exaone_llm, config):
    prompt = exaone_llm.tokenizer.encode(render_chat_prompt(
        exaone_llm.tokenizer.hf, MESSAGES, enable_thinking=True), add_special_tokens=False)
    factory = config.budget_processor_factory(4, " Time to answer.")
    engine = exaone_llm.engine
    engine.add_request("stream", prompt, SamplingParams(max_tokens=24, seed=3, logits_processor_factories=[factory]))
    parser, streamed, deltas = ReasoningParser(enabled=True), ["", ""], []
    while engine.has_unfinished():
        for out in engine.step():
            deltas.append(out.outputs[0].text)
            for i, piece in enumerate(parser.feed(out.outputs[0].text)):
                streamed[i] += piece
    for i, piece in enumerate(parser.finish()):
        streamed[i] += piece
    text = "".join(deltas)
    assert "Time to answer.</think>\n\n" in text and len(deltas) > 5
    whole = ReasoningParser(enabled=True)
    assert [a + b for a, b in zip(whole.feed(text), whole.finish(), strict=True)] == streamed
    assert streamed[0].endswith(" Time to answer.") and streamed[1]


def test_budget_processor_stops_counting_once_the_model_closes_and_bans_eos_until_an_answer(config):
    eos = next(iter(config.eos_token_ids))
    end, blank = config.end_sequence_ids
    word = config.encode(" word")[0]
    processor = config.budget_processor_factory(3)()
    row = lambda: torch.zeros(len(config.token_bytes))  # noqa: E731
    assert processor([], row())[eos] == float("-inf")  # inside the span: no EOS
    out = [word, end]  # the model closed the span itself before the budget
    logits = processor(out, row())
    assert torch.isfinite(logits).sum() == len(logits) - 1 and logits[eos] == float("-inf")
    out += [blank, blank, blank, blank]  # past the budget, but thinking is over: nothing forced
    assert torch.isfinite(processor(out, row())).sum() == len(logits) - 1
    out.append(word)
    assert torch.isfinite(processor(out, row())).all()  # an answer exists: EOS allowed
    assert count_reasoning_tokens(out, config) == 3


def test_budget_zero_forces_from_the_first_step(config):
    processor = config.budget_processor_factory(0)()
    out: list[int] = []
    for expected in config.end_sequence_ids:
        logits = processor(out, torch.randn(len(config.token_bytes)))
        assert int(logits.argmax()) == expected and torch.isfinite(logits).sum() == 1
        out.append(expected)


def test_tracker_finds_a_multi_token_end_tag(default_gguf):
    from engine.model.loader import tokenizer_path
    from engine.text.tokenizer import Tokenizer

    hf = Tokenizer(tokenizer_path(default_gguf)).hf
    config = ReasoningConfig.from_tokenizer(hf, len(hf), [hf.eos_token_id])
    assert len(config.end_sequence_ids) > 2 and not template_traits(hf).thinking_aware
    thinking = hf.encode("I think so</think>", add_special_tokens=False) + hf.encode("\n\n")
    assert count_reasoning_tokens(thinking + hf.encode("Yes."), config) == len(thinking)
    newlines = hf.encode("\n")  # the blank line as two tokens still belongs to the span, a third does not
    assert count_reasoning_tokens(thinking[:-1] + newlines * 3 + hf.encode("Yes."), config) == len(thinking) + 1


SPLIT_CASES = [  # (reasoning on, text, reasoning, content)
    (True, "let me see\n</think>\n\nThe answer.", "let me see\n", "The answer."),
    (True, "<think>\nhmm</think>\n\nok", "\nhmm", "ok"),
    (False, "<think>plan</think>\n\nDone.", "plan", "Done."),
    (False, "Plain <b>answer</b> with a < sign.", "", "Plain <b>answer</b> with a < sign."),
    (True, "still thinking <th", "still thinking <th", ""),
    (False, "x</think>y", "", "xy"),
]


@pytest.mark.parametrize(("enabled", "text", "reasoning", "content"), SPLIT_CASES)
def test_parser_splits_the_same_however_the_text_is_cut(enabled, text, reasoning, content):
    cuts = [c for n in (1, 2) for c in itertools.combinations(range(1, len(text)), n)]
    for cut in [(), *cuts, tuple(range(1, len(text)))]:
        pieces = [text[a:b] for a, b in itertools.pairwise((0, *cut, len(text)))]
        parser, got = ReasoningParser(enabled), ["", ""]
        for piece in pieces:
            for i, part in enumerate(parser.feed(piece)):
                got[i] += part
        for i, part in enumerate(parser.finish()):
            got[i] += part
        assert got == [reasoning, content], pieces


def test_parser_holds_back_only_possible_tags():
    parser = ReasoningParser(enabled=True)
    assert parser.feed("abc</thi") == ("abc", "")
    assert parser.feed("nk>\n") == ("", "")
    assert parser.feed("\nHi <") == ("", "Hi ")
    assert parser.feed("3") == ("", "<3")


# ---- answer reserve and thinking deadline -------------------------------------------------------

def test_answer_reserve_leaves_room_for_the_answer_and_a_request_may_override_it():
    on = ReasoningMode(True, None)
    assert thinking_limits(ReasoningMode(False, None), 100, 2) is None
    assert thinking_limits(on, None, 2) is None  # nothing to reserve from, nothing else set
    assert thinking_limits(on, 100, 2) == (100 - 25 - 2, "answer_reserve", None)  # a quarter of max_tokens
    assert thinking_limits(on, 40, 2) == (40 - ANSWER_RESERVE_FLOOR - 2, "answer_reserve", None)  # the floor
    assert thinking_limits(on, 10, 2) == (0, "answer_reserve", None)  # no room: end thinking at once
    assert thinking_limits(ReasoningMode(True, 30), 1000, 2) == (30, "budget", None)  # the budget is tighter
    assert thinking_limits(on, 100, 2, reserve=50) == (48, "answer_reserve", None)
    assert thinking_limits(on, 100, 2, reserve=0) is None  # the request turned it off
    assert thinking_limits(on, 100, 2, reserve_fraction=0.0) is None  # the server turned it off
    limits = thinking_limits(on, None, 2, deadline_ms=1500, arrival=10.0)
    assert limits == (None, "budget", 11.5)
    for fields, name in (({"reserve": -1}, "reasoning_answer_reserve"), ({"deadline_ms": -5}, "thinking_deadline_ms")):
        with pytest.raises(ValueError, match=name):
            thinking_limits(on, 10, 2, **fields)


def _thinking_prompt(llm: LLM) -> list[int]:
    return llm.tokenizer.encode(render_chat_prompt(llm.tokenizer.hf, MESSAGES, enable_thinking=True),
                                add_special_tokens=False)


def _cut_runs(llm: LLM, config: ReasoningConfig, limits: list[ThinkingLimits], max_tokens: int):
    """Seeded samples under each limit: (processor, output) pairs."""
    made: list = []
    params = [SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=11,
                             logits_processor_factories=[config.budget_processor_factory(lim, made=made)])
              for lim in limits]
    outs = llm.generate(prompt_token_ids=[_thinking_prompt(llm)] * len(limits), sampling_params=params)
    return list(zip(made, [o.outputs[0] for o in outs], strict=True))


class StepClock:
    """A stand-in for time.monotonic in engine.modes.reasoning: each call is one step of 10 ms later."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 0.01
        return self.now


def test_a_deadline_cuts_thinking_that_never_ends_and_an_answer_follows(exaone_llm, config, monkeypatch):
    # The random tiny model never closes its thinking on its own: only the deadline can. The processor reads
    # the clock once per thinking step, so a deadline of 0.5 s on this clock falls after 49 thinking tokens.
    monkeypatch.setattr(reasoning_module, "time", StepClock())
    (processor, sample), = _cut_runs(exaone_llm, config, [ThinkingLimits(None, "budget", 0.5)], max_tokens=200)
    assert processor.cut == "deadline"
    assert count_reasoning_tokens(sample.token_ids, config) == 49 + len(config.end_sequence_ids)
    reasoning, content = split_reasoning(sample.text, enabled=True)
    assert content.strip() and reasoning


def test_deadline_zero_is_budget_zero_and_the_first_limit_wins(exaone_llm, config):
    now = time.monotonic()
    runs = _cut_runs(exaone_llm, config, [
        ThinkingLimits(0, "budget", None),
        ThinkingLimits(None, "budget", now),  # a deadline of 0 ms
        ThinkingLimits(5, "budget", now + 3600),  # the budget comes first
        ThinkingLimits(10_000, "budget", now),  # the deadline comes first
    ], max_tokens=40)
    assert [p.cut for p, _ in runs] == ["budget", "deadline", "budget", "deadline"]
    assert runs[0][1].token_ids == runs[1][1].token_ids == runs[3][1].token_ids
    forced = len(config.end_sequence_ids)
    assert count_reasoning_tokens(runs[0][1].token_ids, config) == forced
    assert count_reasoning_tokens(runs[2][1].token_ids, config) == 5 + forced
