"""The OpenAI Responses API's bodies as msgspec Structs (POST /v1/responses); field names follow OpenAI.

Input items are decoded one by one (server/openai/responses.py) so an error names `input[i]`; output items
are tagged Structs whose `type` comes first, as the SDK reads them.
"""

from __future__ import annotations

from typing import Any, Literal

from msgspec import UNSET, Struct, UnsetType

# ---- requests --------------------------------------------------------------------------------


class ContentPart(Struct, kw_only=True):
    """One part of a message's content: `input_text` / `output_text` (other kinds are refused)."""

    type: str
    text: str | None = None


class InputMessage(Struct, kw_only=True):
    """A message item (`type` may be left out, as in the SDK's easy input messages)."""

    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]


class FunctionCallInput(Struct, kw_only=True):
    """A `function_call` item of an earlier turn."""

    call_id: str
    name: str
    arguments: str


class FunctionCallOutputInput(Struct, kw_only=True):
    """A `function_call_output` item: the result of a call, sent back."""

    call_id: str
    output: str | list[ContentPart]


# omit_defaults: the chat template prints tools as JSON, and the response echoes them.
class FunctionTool(Struct, kw_only=True, omit_defaults=True):
    """A function tool, flat as the Responses API has it (chat nests it under `function`)."""

    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, Any] | bool | None = None
    strict: bool | None = None


class FunctionToolChoice(Struct, kw_only=True):
    """`tool_choice: {"type": "function", "name": ...}`."""

    type: Literal["function"]
    name: str


class TextFormat(Struct, kw_only=True, omit_defaults=True):
    """`text.format`: free text, any JSON object, or JSON of a schema (flat, unlike chat's response_format)."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema: dict[str, Any] | bool | None = None
    description: str | None = None
    strict: bool | None = None


class TextConfig(Struct, kw_only=True, omit_defaults=True):
    """`text`: the output's format."""

    format: TextFormat | None = None


class ReasoningParam(Struct, kw_only=True):
    """`reasoning`: `effort` switches thinking as chat's reasoning_effort does."""

    effort: str | None = None
    summary: str | None = None


class ResponsesRequest(Struct, kw_only=True):
    """POST /v1/responses; unknown fields are ignored, fields this server cannot honour are refused."""

    input: str | list[dict[str, Any]]
    model: str | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    reasoning: ReasoningParam | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionToolChoice | None = None
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    stream: bool = False
    # Refused unless off: nothing is stored (see serving_responses.UNSUPPORTED).
    store: bool | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    background: bool | None = None


# ---- responses -------------------------------------------------------------------------------


class ReasoningText(Struct):
    """The thinking text of a reasoning item."""

    text: str
    type: str = "reasoning_text"


class ReasoningItem(Struct, tag="reasoning", tag_field="type"):
    """The model's thinking span; `content` carries it (`summary` stays empty: nothing summarises it).

    `reasoning_cut` (ours, as on chat's message) says what ended the thinking early: budget, answer_reserve or
    deadline; absent when the model ended it itself."""

    id: str
    content: list[ReasoningText]
    status: str
    summary: list[Any] = []
    reasoning_cut: str | UnsetType = UNSET


class OutputText(Struct):
    """The answer text of a message item."""

    text: str
    type: str = "output_text"
    annotations: list[Any] = []
    logprobs: list[Any] = []


class MessageItem(Struct, tag="message", tag_field="type"):
    """An assistant message."""

    id: str
    content: list[OutputText]
    status: str
    role: str = "assistant"


class FunctionCallItem(Struct, tag="function_call", tag_field="type"):
    """A call the model made; `arguments` is JSON text."""

    id: str
    call_id: str
    name: str
    arguments: str
    status: str


OutputItem = ReasoningItem | MessageItem | FunctionCallItem


class InputTokensDetails(Struct, frozen=True):
    """`usage.input_tokens_details` (no prompt cache yet)."""

    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(Struct):
    """`usage.output_tokens_details`: how many output tokens were thinking."""

    reasoning_tokens: int


class ResponseUsage(Struct):
    """Token counts of a response."""

    input_tokens: int
    output_tokens: int
    total_tokens: int
    output_tokens_details: OutputTokensDetails
    input_tokens_details: InputTokensDetails = InputTokensDetails()


class IncompleteDetails(Struct):
    """Why a response is incomplete."""

    reason: str | None


class ResponseObject(Struct, kw_only=True):
    """The response: its output items, status and usage, and the request's settings echoed back."""

    id: str
    created_at: int
    model: str
    status: str
    output: list[OutputItem]
    usage: ResponseUsage | None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None
    max_output_tokens: int | None
    temperature: float | None
    top_p: float | None
    reasoning: ReasoningParam | None
    tools: list[FunctionTool]
    tool_choice: str | FunctionToolChoice
    parallel_tool_calls: bool
    text: TextConfig
    metadata: dict[str, str]
    user: str | None
    object: str = "response"
    error: None = None
    store: bool = False
    background: bool = False
    previous_response_id: None = None
