"""Grammar-constrained decoding: request validation, masks step by step, and real text from the default model."""

import json

import jsonschema
import pytest
import torch
from fixtures_tools import PERSON, PERSON_FORMAT, SCHEMAS, TIME, TOOLS

from engine import LLM, SamplingParams
from engine.modes.chat_templates import render_chat_prompt
from engine.modes.guided import GuidedDecoding
from engine.modes.reasoning import ReasoningConfig, split_reasoning
from engine.modes.tool_calls import parse_tool_calls


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(progress=False)


@pytest.fixture(scope="module")
def guided(llm: LLM) -> GuidedDecoding:
    engine = llm.engine
    return GuidedDecoding(ReasoningConfig.from_tokenizer(
        engine.tokenizer.hf, engine.model_config.vocab_size, engine.eos_token_ids))


@pytest.mark.parametrize(("request_fields", "field"), [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}]},
     r"tools\[0\].function.parameters"),
    ({"tools": [{"type": "function", "function": {"parameters": {}}}]}, r"tools\[0\].function.name"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "get_time"}}}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}},
     "response_format"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
])
def test_bad_requests_name_the_field(guided, request_fields, field):
    with pytest.raises(ValueError, match=field):
        guided.processor_factory(**request_fields)


def test_nothing_to_constrain_gives_no_processor(guided):
    assert guided.processor_factory() is None
    assert guided.processor_factory(tools=TOOLS, tool_choice="none") is None
    assert guided.processor_factory(response_format={"type": "text"}) is None


def test_compiled_grammars_are_cached(guided):
    a = guided.processor_factory(response_format=PERSON_FORMAT)()
    b = guided.processor_factory(response_format=json.loads(json.dumps(PERSON_FORMAT)))()
    assert a._compiled is b._compiled


def _allowed(processor, output: list[int], vocab: int) -> torch.Tensor:
    return torch.isfinite(processor(output, torch.zeros(vocab))).nonzero().flatten()


def test_with_reasoning_the_grammar_starts_after_the_thinking_span(llm, guided):
    tok, vocab, eos = llm.tokenizer, guided.config.tokenizer_info.vocab_size, sorted(guided.config.eos_token_ids)
    processor = guided.processor_factory(tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
                                         reasoning=True)()
    out = tok.encode("Free thoughts <tool_call> here", add_special_tokens=False)
    assert len(_allowed(processor, out, vocab)) == vocab  # inactive while thinking
    out += guided.config.end_sequence_ids[:-1]  # `</think>` in several tokens; the blank line must follow
    allowed = _allowed(processor, out, vocab)
    assert guided.config.end_sequence_ids[-1] in allowed and tok.encode("Hi", add_special_tokens=False)[0] not in allowed
    call = '\n\n<tool_call>{"name": "get_time", "arguments": {"timezone": "KST"}}</tool_call>'
    for token in tok.encode(call, add_special_tokens=False):
        assert token in _allowed(processor, out, vocab), tok.decode([token])
        out.append(token)
    assert _allowed(processor, out, vocab).tolist() == eos  # one call only, then EOS


def test_auto_leaves_text_free_until_a_call_opens(llm, guided):
    tok, vocab = llm.tokenizer, guided.config.tokenizer_info.vocab_size
    processor = guided.processor_factory(tools=TOOLS, tool_choice="auto")()
    out = tok.encode("Sure, let me check", add_special_tokens=False)
    assert len(_allowed(processor, out, vocab)) > vocab - 100
    out += tok.encode(" <tool_call>", add_special_tokens=False)
    allowed = _allowed(processor, out, vocab)
    assert tok.encode('{"', add_special_tokens=False)[0] in allowed
    assert len(allowed) < 10 and tok.encode(" hello", add_special_tokens=False)[0] not in allowed


def _chat_ids(llm: LLM, content: str, tools=None, reasoning: bool = False) -> list[int]:
    prompt = render_chat_prompt(llm.tokenizer.hf, [{"role": "user", "content": content}],
                                enable_thinking=reasoning, tools=tools)
    return llm.tokenizer.encode(prompt, add_special_tokens=False)


def _generate(llm: LLM, ids: list[int], factory, seeds: int, max_tokens: int = 64, extra=()):
    """`seeds` samples of one prompt: n samples get seeds 0..n-1 and share one prefill."""
    params = SamplingParams(n=seeds, max_tokens=max_tokens, temperature=0.8, seed=0,
                            logits_processor_factories=[factory, *extra])
    return llm.generate(prompt_token_ids=[ids], sampling_params=params)[0].outputs


def test_tool_choice_required_on_the_default_model(llm, guided):
    ids = _chat_ids(llm, "What's the weather like in Paris today?", TOOLS)
    factory = guided.processor_factory(tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    for sample in _generate(llm, ids, factory, seeds=20):
        content, calls = parse_tool_calls(sample.text)
        assert sample.finish_reason == "stop" and content == "" and len(calls) == 1, sample.text
        jsonschema.validate(json.loads(calls[0].arguments), SCHEMAS[calls[0].name])


def test_named_tool_choice_calls_that_function_once(llm, guided):
    ids = _chat_ids(llm, "What's the weather like in Paris today?", TOOLS)
    choice = {"type": "function", "function": {"name": "get_time"}}
    for sample in _generate(llm, ids, guided.processor_factory(tools=TOOLS, tool_choice=choice), seeds=5):
        _, calls = parse_tool_calls(sample.text)
        assert [c.name for c in calls] == ["get_time"] and sample.finish_reason == "stop", sample.text
        jsonschema.validate(json.loads(calls[0].arguments), TIME)


def test_response_format_json_schema_on_the_default_model(llm, guided):
    ids = _chat_ids(llm, "Describe a fictional programmer as JSON with name, age and languages.")
    for sample in _generate(llm, ids, guided.processor_factory(response_format=PERSON_FORMAT), seeds=20):
        assert sample.finish_reason == "stop", sample.text
        jsonschema.validate(json.loads(sample.text), PERSON)


def test_json_after_a_budgeted_thinking_span(llm, guided):
    ids = _chat_ids(llm, "Describe a fictional programmer as JSON.", reasoning=True)
    assert llm.tokenizer.decode(ids).endswith("<think>\n")  # the generic fallback for SmolLM2
    budget = guided.config.budget_processor_factory(6)
    factory = guided.processor_factory(response_format=PERSON_FORMAT, reasoning=True)
    for sample in _generate(llm, ids, factory, seeds=4, max_tokens=80, extra=[budget]):
        reasoning, content = split_reasoning(sample.text, enabled=True)
        assert reasoning and sample.finish_reason == "stop", sample.text
        jsonschema.validate(json.loads(content), PERSON)


def test_processors_step_back_over_rejected_drafts(llm, guided):
    """Speculative decoding shows a processor drafted tokens that may be rejected: after any such detour its
    masks are those of a processor that only ever saw the accepted tokens."""
    tok, vocab = llm.tokenizer, guided.config.tokenizer_info.vocab_size
    out = [*tok.encode("Let me think", add_special_tokens=False), *guided.config.end_sequence_ids,
           *tok.encode('<tool_call>{"name": "get_time", "arguments": {"timezone": "KST"}}</tool_call>',
                       add_special_tokens=False)]
    makers = [guided.processor_factory(tools=TOOLS, tool_choice="required", reasoning=True),
              guided.config.budget_processor_factory(3)]
    for make in makers:
        straight = make()
        expected = [_allowed(straight, out[:j], vocab).tolist() for j in range(len(out) + 1)]
        detoured = make()
        junk = tok.encode(" nonsense { ] tail", add_special_tokens=False)
        for j in range(len(out)):
            for d in range(1, 4):  # a rejected draft of d tokens, seen row by row
                _allowed(detoured, out[:j] + junk[:d], vocab)
            assert _allowed(detoured, out[: j + 1], vocab).tolist() == expected[j + 1], j
