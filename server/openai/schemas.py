"""OpenAI request and response bodies as msgspec Structs (validation and fast JSON in one place).

Request Structs ignore unknown fields, as vLLM does; field names follow OpenAI, extras follow vLLM.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from server.openai.tool_schemas import (
    DeltaToolCall,
    MessageToolCall,
    NamedToolChoice,
    ResponseFormat,
    Tool,
    ToolCallOut,
)

DEFAULT_MAX_REQUEST_BODY_BYTES = 4 << 20  # larger bodies get 413 unless the server is told otherwise

# Bounded numbers, checked while decoding (400 naming the field). Integers are signed 64-bit as OpenAI's
# `seed` is; float ranges are OpenAI's (temperature [0, 2], penalties [-2, 2], logit_bias [-100, 100]).
Int64 = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
Count = Annotated[int, Meta(ge=0, le=2**63 - 1)]
Temperature = Annotated[float, Meta(ge=0.0, le=2.0)]
Probability = Annotated[float, Meta(ge=0.0, le=1.0)]
TopP = Annotated[float, Meta(gt=0.0, le=1.0)]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
RepetitionPenalty = Annotated[float, Meta(gt=0.0, le=10.0)]
LogitBias = Annotated[float, Meta(ge=-100.0, le=100.0)]

# ---- requests --------------------------------------------------------------------------------


class StreamOptions(Struct):
    """`stream_options`: ask for a final usage chunk."""

    include_usage: bool = False


class ContentPart(Struct):
    """One part of a message's content; only `{"type": "text", "text": ...}` is served."""

    type: str
    text: str | None = None


class Message(Struct, kw_only=True):
    """One chat message; tool fields are kept for the chat template."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None


class SamplingRequest(Struct, kw_only=True):
    """Fields shared by chat and completions requests (vLLM's extras included)."""

    model: str | None = None
    n: Annotated[int, Meta(ge=1, le=2**63 - 1)] = 1
    max_tokens: Count | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: Annotated[int, Meta(ge=-1, le=2**63 - 1)] | None = None
    min_p: Probability | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    repetition_penalty: RepetitionPenalty | None = None
    seed: Int64 | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[Int64] | None = None
    logit_bias: dict[str, LogitBias] | None = None  # token id (as text) -> bias added to its logit
    min_tokens: Count = 0
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    priority: int = 0  # vLLM's: lower values are scheduled first (with --scheduling-policy priority/mode-aware)

    @property
    def include_usage(self) -> bool:
        """True when a streamed response ends with a usage chunk."""
        return self.stream and self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(SamplingRequest, kw_only=True):
    """POST /v1/chat/completions."""

    messages: list[Message]
    max_completion_tokens: Int64 | None = None
    logprobs: bool = False
    top_logprobs: Int64 | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    # Mode switching (issue 5); vLLM's and llama.cpp's names where they have one.
    reasoning: bool | None = None
    reasoning_effort: str | None = None
    thinking_token_budget: Int64 | None = None
    thinking_budget: Int64 | None = None  # alias of thinking_token_budget
    thinking_budget_message: str | None = None
    reasoning_answer_reserve: int | None = None  # answer tokens kept out of max_tokens (default: the server's)
    thinking_deadline_ms: int | None = None  # end thinking this long after arrival (default: the server's)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None


class CompletionRequest(SamplingRequest, kw_only=True):
    """POST /v1/completions; `prompt` is a string, strings, token ids, or lists of token ids."""

    prompt: str | list[str | Int64 | list[Int64]]
    echo: bool = False
    logprobs: Int64 | None = None


class TokenizeRequest(Struct, kw_only=True):
    """POST /tokenize: a prompt, or chat messages rendered with the chat template."""

    model: str | None = None
    prompt: str | None = None
    messages: list[Message] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    chat_template_kwargs: dict[str, Any] | None = None
    # What changes the rendered prompt, as on chat requests.
    reasoning: bool | None = None
    reasoning_effort: str | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    return_token_strs: bool = False  # vLLM's: also answer each token as the vocabulary spells it


class DetokenizeRequest(Struct, kw_only=True):
    """POST /detokenize."""

    tokens: list[Int64]
    model: str | None = None


# ---- responses -------------------------------------------------------------------------------


class CompletionTokensDetails(Struct):
    """`usage.completion_tokens_details`: how many output tokens were thinking."""

    reasoning_tokens: int


class PromptTokensDetails(Struct):
    """`usage.prompt_tokens_details`: how many prompt tokens the prefix cache supplied."""

    cached_tokens: int


class UsageInfo(Struct):
    """Token counts of a request (chat adds completion_tokens_details)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    completion_tokens_details: CompletionTokensDetails | UnsetType = UNSET
    prompt_tokens_details: PromptTokensDetails | UnsetType = UNSET


class TopLogprob(Struct):
    """One alternative token in chat logprobs."""

    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobEntry(Struct):
    """Chat logprobs of one sampled token."""

    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]


class ChatLogprobs(Struct):
    """`choices[i].logprobs` of a chat response or chunk."""

    content: list[TokenLogprobEntry]
    refusal: None = None


class ChatMessageOut(Struct):
    """The assistant message of a non-streaming chat choice.

    Reasoning fields appear when there is reasoning (or reasoning was asked for); `reasoning_content`
    is vLLM's older name and `reasoning` its newer one, both carry the same text.
    """

    role: str
    content: str | None
    reasoning_content: str | UnsetType = UNSET
    reasoning: str | UnsetType = UNSET
    tool_calls: list[ToolCallOut] | UnsetType = UNSET
    reasoning_cut: str | UnsetType = UNSET  # what ended the thinking early: budget, answer_reserve, deadline


class ChatChoice(Struct):
    """One choice of a chat completion."""

    index: int
    message: ChatMessageOut
    logprobs: ChatLogprobs | None
    finish_reason: str | None
    stop_reason: str | int | None = None


class ChatCompletionResponse(Struct):
    """Body of a non-streaming chat completion."""

    id: str
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    object: str = "chat.completion"


class DeltaMessage(Struct):
    """What a chat chunk adds to a choice's message; empty in the chunk that carries finish_reason."""

    role: str | UnsetType = UNSET
    content: str | UnsetType = UNSET
    reasoning_content: str | UnsetType = UNSET
    reasoning: str | UnsetType = UNSET
    tool_calls: list[DeltaToolCall] | UnsetType = UNSET
    reasoning_cut: str | UnsetType = UNSET  # on the chunk that finishes a choice whose thinking was cut


class ChatChunkChoice(Struct):
    """One choice's delta in a chat chunk."""

    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(Struct):
    """One `data:` event of a streamed chat completion."""

    id: str
    created: int
    model: str
    choices: list[ChatChunkChoice]
    object: str = "chat.completion.chunk"
    # With include_usage every chunk carries "usage": null and the last one the numbers (as OpenAI).
    usage: UsageInfo | UnsetType | None = UNSET


class CompletionLogprobs(Struct):
    """Legacy completions logprobs: parallel lists per token."""

    tokens: list[str]
    token_logprobs: list[float | None]  # None for the first echoed prompt token
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(Struct):
    """One choice of a completion (also the shape of a streamed chunk's choice)."""

    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str | None
    stop_reason: str | int | None = None


class CompletionResponse(Struct):
    """Body of a completion, or one chunk of a streamed one (object `text_completion` in both)."""

    id: str
    created: int
    model: str
    choices: list[CompletionChoice]
    object: str = "text_completion"
    usage: UsageInfo | UnsetType | None = UNSET


class ModelCard(Struct):
    """One entry of GET /v1/models."""

    id: str
    created: int
    root: str
    max_model_len: int
    object: str = "model"
    owned_by: str = "exaone-serve"


class ModelList(Struct):
    """Body of GET /v1/models."""

    data: list[ModelCard]
    object: str = "list"


class TokenizeResponse(Struct):
    """Body of POST /tokenize: vLLM's fields, and `prompt`, the text the chat template rendered (messages only)."""

    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None  # with return_token_strs, as vLLM answers it (null otherwise)
    prompt: str | UnsetType = UNSET  # the exact prompt a chat request with these messages would start from


class DetokenizeResponse(Struct):
    """Body of POST /detokenize."""

    prompt: str


def encode(obj: Any) -> bytes:
    """JSON bytes of a response Struct."""
    return msgspec.json.encode(obj)
