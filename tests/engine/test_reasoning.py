"""Reasoning mode: the switch and its precedence, prompts, the thinking budget on a tiny EXAONE, the splitter."""

import itertools

import pytest
import torch
from fixtures_exaone import exaone_tokenizer, make_exaone_model

from engine import LLM, SamplingParams
from engine.chat_templates import render_chat_prompt, template_traits
from engine.reasoning import (
    EFFORT,
    ReasoningConfig,
    ReasoningParser,
    count_reasoning_tokens,
    resolve_reasoning,
    split_reasoning,
)

ON, OFF = "[|assistant|]\n<think>\n", "[|assistant|]\n<think>\n\n</think>\n\n"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]


@pytest.fixture(scope="module")
def exaone_llm(tmp_path_factory: pytest.TempPathFactory) -> LLM:
    return LLM(model=str(make_exaone_model(tmp_path_factory.mktemp("exaone"))), progress=False)


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
    from engine.loader import tokenizer_path
    from engine.tokenizer import Tokenizer

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
    from engine.loader import tokenizer_path
    from engine.tokenizer import Tokenizer

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
