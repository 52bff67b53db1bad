"""Mode switching for chat requests: reasoning on/off and its budget, tools, structured output.

The engine has the pieces (engine/modes/reasoning.py, guided.py, tool_calls.py, chat_templates.py); this module
decides per request which apply, renders the prompt, and splits each sample's text into OpenAI's fields.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from msgspec import UNSET
from transformers import PreTrainedTokenizerBase

from engine.core.async_engine import AsyncEngine
from engine.core.sampling_params import LogitsProcessor
from engine.modes.chat_templates import TemplateTraits, render_chat_prompt, template_traits
from engine.modes.guided import GuidedDecoding
from engine.modes.reasoning import (
    DEFAULT_ANSWER_RESERVE,
    THINK_END,
    THINK_START,
    ReasoningConfig,
    ReasoningMode,
    ReasoningParser,
    ThinkingBudgetProcessor,
    count_reasoning_tokens,
    resolve_reasoning,
    thinking_limits,
)
from engine.modes.tool_calls import TOOL_CALL_END, TOOL_CALL_START, ToolCallDelta, ToolCallParser
from engine.text.tokenizer import Tokenizer
from server.errors import APIError, bad_request
from server.openai.schemas import ChatCompletionRequest, ChatMessageOut, DeltaMessage, Message
from server.openai.tool_schemas import (
    DeltaFunction,
    DeltaToolCall,
    FunctionCallOut,
    MessageToolCall,
    NamedToolChoice,
    Tool,
    ToolCallOut,
)

logger = logging.getLogger(__name__)

# LG's advice for EXAONE 4.0, applied where a request leaves the parameter unset, and only for models whose
# template knows reasoning: temperature below 0.6 without reasoning (0.3 keeps a little variety), and
# 0.6 / top_p 0.95 with it, plus presence_penalty 1.5 against the repetition loops long thinking falls into.
NON_REASONING_SAMPLING: dict[str, float] = {"temperature": 0.3}
REASONING_SAMPLING: dict[str, float] = {"temperature": 0.6, "top_p": 0.95, "presence_penalty": 1.5}

# chat_template_kwargs are data for the model's template, never a template or a renderer argument: every
# parameter of apply_chat_template (chat_template, conversation, tools, documents, ...) and the names the
# renderer gives the template itself are refused.
RESERVED_TEMPLATE_KWARGS = frozenset(inspect.signature(PreTrainedTokenizerBase.apply_chat_template).parameters
                                     ) - {"self", "kwargs"} | {"messages", "conversations"}
# The engine's validation messages start with the offending field's path, e.g. `tools[0].function.name`.
_MODE_FIELDS = {"reasoning", "reasoning_effort", "thinking_token_budget", "thinking_budget", "chat_template_kwargs",
                "tools", "tool_choice", "response_format", "reasoning_answer_reserve", "thinking_deadline_ms"}

ProcessorFactory = Callable[[], LogitsProcessor]


def mode_error(exc: ValueError) -> APIError:
    """400 for a mode field the engine rejected, with the field's path as `param`."""
    message = str(exc)
    path = message.split(" ", 1)[0].rstrip(":,")
    return bad_request(message, path if re.split(r"[.\[]", path, maxsplit=1)[0] in _MODE_FIELDS else None)


def _template_call(call: MessageToolCall) -> dict[str, Any]:
    # transformers' templates (and vLLM) take arguments as an object; text that is not one stays text
    args = call.function.arguments
    if isinstance(args, str):
        try:
            parsed = json.loads(args)
        except ValueError:
            parsed = None
        args = parsed if isinstance(parsed, dict) else args
    out: dict[str, Any] = {"type": "function", "function": {"name": call.function.name, "arguments": args}}
    if call.id is not None:
        out["id"] = call.id
    return out


def template_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Messages as chat templates read them: text parts joined, tool calls with object arguments."""
    out = []
    for i, m in enumerate(messages):
        content = m.content
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if part.type != "text" or part.text is None:
                    raise bad_request(f"only text content parts are served, got type {part.type!r}",
                                      f"messages[{i}].content[{j}]")
                texts.append(part.text)
            content = "\n".join(texts)
        # "developer" is OpenAI's newer name for the system role
        message: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": content or ""}
        if m.name is not None:
            message["name"] = m.name
        if m.tool_calls is not None:
            message["tool_calls"] = [_template_call(c) for c in m.tool_calls]
        if m.tool_call_id is not None:
            message["tool_call_id"] = m.tool_call_id
        out.append(message)
    return out


def offered_tools(tools: list[Tool] | None, tool_choice: str | NamedToolChoice | None) -> list[dict[str, Any]] | None:
    """The tools the template shows and the parser looks for: none when tool_choice is "none"."""
    return None if tool_choice == "none" or not tools else msgspec.to_builtins(tools)


@dataclass(frozen=True)
class ChatPlan:
    """A chat request's modes, resolved and validated."""

    mode: ReasoningMode
    tools: list[dict[str, Any]] | None
    factories: list[ProcessorFactory]  # grammar first, thinking budget last
    sampling_defaults: dict[str, float]
    config: ReasoningConfig
    thinking: list[ThinkingBudgetProcessor] = field(default_factory=list)  # one per sample, once the engine has it

    def reasoning_cut(self, index: int) -> str | None:
        """What cut sample `index`'s thinking (budget, answer_reserve, deadline), or None."""
        return self.thinking[index].cut if index < len(self.thinking) else None

    def splitter(self) -> OutputSplitter:
        """A splitter for one sample of this request."""
        return OutputSplitter(self.mode.enabled, self.tools is not None)

    def reasoning_tokens(self, token_ids: list[int]) -> int:
        """usage.completion_tokens_details.reasoning_tokens of one sample."""
        return count_reasoning_tokens(token_ids, self.config) if self.mode.enabled else 0


@dataclass(frozen=True)
class ChatModes:
    """One engine's mode-switching pieces, with the server's defaults for them."""

    tokenizer: Tokenizer
    reasoning: ReasoningConfig
    guided: GuidedDecoding
    traits: TemplateTraits
    default_template_kwargs: dict[str, Any]
    max_thinking_tokens: int | None
    answer_reserve: float = DEFAULT_ANSWER_RESERVE  # share of max_tokens kept for the answer (with a floor)
    thinking_deadline_ms: int | None = None  # default deadline of reasoning requests

    @staticmethod
    def check_server_defaults(default_template_kwargs: dict[str, Any], max_thinking_tokens: int | None) -> None:
        """Raise ValueError for server settings that would fail every request."""
        resolve_reasoning(default_template_kwargs=default_template_kwargs, max_thinking_tokens=max_thinking_tokens)

    @classmethod
    def for_engine(cls, engine: AsyncEngine, default_template_kwargs: dict[str, Any],
                   max_thinking_tokens: int | None, answer_reserve: float = DEFAULT_ANSWER_RESERVE,
                   thinking_deadline_ms: int | None = None) -> ChatModes:
        """Build once per engine (xgrammar reads the whole vocabulary: ~0.3 s for 50k tokens)."""
        tokenizer, llm = engine.tokenizer, engine.engine
        # The parsers read the tags in the detokenized text, which drops special tokens by default.
        hidden = sorted({THINK_START, THINK_END, TOOL_CALL_START, TOOL_CALL_END} & set(tokenizer.hf.all_special_tokens))
        if hidden:
            logger.warning("%s are special tokens of this tokenizer: reasoning and tool calls are only split out "
                           "of requests that set skip_special_tokens=false", ", ".join(hidden))
        config = ReasoningConfig.from_tokenizer(tokenizer.hf, llm.model_config.vocab_size, sorted(llm.eos_token_ids))
        return cls(tokenizer, config, GuidedDecoding(config), template_traits(tokenizer.hf),
                   dict(default_template_kwargs), max_thinking_tokens, answer_reserve, thinking_deadline_ms)

    def mode(self, *, reasoning: bool | None, chat_template_kwargs: dict[str, Any] | None,
             reasoning_effort: str | None, thinking_token_budget: int | None = None,
             thinking_budget: int | None = None) -> ReasoningMode:
        """Reasoning on or off and the thinking budget (400 naming a bad field)."""
        try:
            return resolve_reasoning(
                reasoning=reasoning, chat_template_kwargs=chat_template_kwargs, reasoning_effort=reasoning_effort,
                thinking_token_budget=thinking_token_budget, thinking_budget=thinking_budget,
                default_template_kwargs=self.default_template_kwargs, max_thinking_tokens=self.max_thinking_tokens)
        except ValueError as e:
            raise mode_error(e) from None

    def plan(self, req: ChatCompletionRequest, max_tokens: int | None = None) -> ChatPlan:
        """Resolve and validate every mode field of a chat request (max_tokens: what it may generate)."""
        mode = self.mode(reasoning=req.reasoning, chat_template_kwargs=req.chat_template_kwargs,
                         reasoning_effort=req.reasoning_effort, thinking_token_budget=req.thinking_token_budget,
                         thinking_budget=req.thinking_budget)
        try:
            grammar = self.guided.processor_factory(
                response_format=msgspec.to_builtins(req.response_format), tools=msgspec.to_builtins(req.tools),
                tool_choice=msgspec.to_builtins(req.tool_choice), parallel_tool_calls=req.parallel_tool_calls,
                reasoning=mode.enabled)
        except ValueError as e:
            raise mode_error(e) from None
        factories = [grammar] if grammar else []
        deadline = req.thinking_deadline_ms if req.thinking_deadline_ms is not None else self.thinking_deadline_ms
        try:
            limits = thinking_limits(mode, max_tokens, len(self.reasoning.end_sequence_ids),
                                     reserve_fraction=self.answer_reserve, reserve=req.reasoning_answer_reserve,
                                     deadline_ms=deadline)
        except ValueError as e:
            raise mode_error(e) from None
        made: list[ThinkingBudgetProcessor] = []
        if limits is not None:
            factories.append(self.reasoning.budget_processor_factory(limits, req.thinking_budget_message, made))
        defaults = {}
        if self.traits.thinking_aware:
            defaults = REASONING_SAMPLING if mode.enabled else NON_REASONING_SAMPLING
        return ChatPlan(mode, offered_tools(req.tools, req.tool_choice), factories, defaults, self.reasoning, made)

    def render(self, messages: list[Message], mode: ReasoningMode, tools: list[dict[str, Any]] | None,
               chat_template_kwargs: dict[str, Any] | None, add_generation_prompt: bool = True) -> list[int]:
        """Prompt token ids of a conversation (400 when the template rejects it)."""
        return self.render_text(messages, mode, tools, chat_template_kwargs, add_generation_prompt)[1]

    def render_text(self, messages: list[Message], mode: ReasoningMode, tools: list[dict[str, Any]] | None,
                    chat_template_kwargs: dict[str, Any] | None,
                    add_generation_prompt: bool = True) -> tuple[str, list[int]]:
        """The prompt text the template renders for a conversation, and its token ids (400 when the template
        rejects it)."""
        if not messages:
            raise bad_request("messages must contain at least one message", "messages")
        check_template_kwargs(chat_template_kwargs)
        kwargs = {**self.default_template_kwargs, **(chat_template_kwargs or {})}
        try:
            text = render_chat_prompt(self.tokenizer.hf, template_messages(messages), enable_thinking=mode.enabled,
                                      tools=tools, template_kwargs=kwargs, traits=self.traits,
                                      add_generation_prompt=add_generation_prompt)
        except APIError:
            raise
        except Exception as e:  # what a template raises is about this request's data (e.g. documents: [1])
            raise bad_request(f"the chat template could not render this request: {type(e).__name__}: {e}",
                              "messages") from None
        return text, self.tokenizer.encode(text, add_special_tokens=False)


def check_template_kwargs(chat_template_kwargs: dict[str, Any] | None) -> None:
    """400 naming the first key that the renderer reserves (a template, the conversation, tools, ...)."""
    reserved = sorted(RESERVED_TEMPLATE_KWARGS & (chat_template_kwargs or {}).keys())
    if reserved:
        raise bad_request(f"chat_template_kwargs may not set `{reserved[0]}`: templates come only from the model "
                          "or the server's --chat-template, and the server sets the conversation and tools",
                          f"chat_template_kwargs.{reserved[0]}")

def _delta_call(d: ToolCallDelta) -> DeltaToolCall:
    first = d.id is not None
    return DeltaToolCall(index=d.index, id=d.id if first else UNSET, type="function" if first else UNSET,
                         function=DeltaFunction(name=UNSET if d.name is None else d.name, arguments=d.arguments))


@dataclass
class Piece:
    """What part of an output adds to a choice: reasoning text, answer text, tool-call pieces."""

    reasoning: str = ""
    content: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content or self.tool_calls)

    def extend(self, other: Piece) -> None:
        """Append a later piece."""
        self.reasoning += other.reasoning
        self.content += other.content
        self.tool_calls += other.tool_calls

    def delta(self) -> DeltaMessage:
        """This piece as a streamed delta; an otherwise empty delta keeps `content: ""` (for logprobs)."""
        reasoning = self.reasoning or UNSET
        content = self.content if self.content or not (self.reasoning or self.tool_calls) else UNSET
        calls = [_delta_call(d) for d in self.tool_calls] or UNSET
        return DeltaMessage(content=content, reasoning_content=reasoning, reasoning=reasoning, tool_calls=calls)


class OutputSplitter:
    """One sample's text as reasoning, content and tool calls; fed deltas while streaming, or the whole text."""

    def __init__(self, reasoning: bool, tools: bool) -> None:
        self.reasoning_on = reasoning
        self._reasoning = ReasoningParser(reasoning)
        self._tools = ToolCallParser() if tools else None

    def feed(self, text: str) -> Piece:
        """Take a text delta; return what is certain now."""
        return self._content(*self._reasoning.feed(text))

    def finish(self) -> Piece:
        """Flush what was held back (a possible tag start, a call still open)."""
        piece = self._content(*self._reasoning.finish())
        if self._tools is not None:
            rest, deltas = self._tools.finish()
            piece.extend(Piece(content=rest, tool_calls=deltas))
        return piece

    def _content(self, reasoning: str, content: str) -> Piece:
        if self._tools is None:
            return Piece(reasoning, content)
        content, deltas = self._tools.feed(content)
        return Piece(reasoning, content, deltas)

    def finish_reason(self, reason: str | None) -> str | None:
        """OpenAI's finish reason: `tool_calls` when a stopped output made calls."""
        return "tool_calls" if reason == "stop" and self._tools is not None and self._tools.calls else reason

    def message(self, text: str, reasoning_cut: str | None = None) -> ChatMessageOut:
        """The whole message of a non-streaming choice from its full text."""
        piece = self.feed(text)
        piece.extend(self.finish())
        calls = self._tools.calls if self._tools is not None else []
        reasoning = piece.reasoning if self.reasoning_on or piece.reasoning else UNSET
        out_calls = [ToolCallOut(id=c.id, function=FunctionCallOut(c.name, c.arguments)) for c in calls]
        # OpenAI sends content null beside tool calls when there is no text
        content = piece.content if piece.content or not calls else None
        return ChatMessageOut("assistant", content, reasoning, reasoning, out_calls or UNSET,
                              reasoning_cut or UNSET)
