"""OpenAI's tool and structured-output bodies as msgspec Structs: tools, tool_choice, response_format, calls."""

from __future__ import annotations

from typing import Any, Literal

from msgspec import UNSET, Struct, UnsetType

# ---- requests --------------------------------------------------------------------------------


class FunctionCall(Struct):
    """`function` of a past assistant tool call; OpenAI sends `arguments` as JSON text."""

    name: str
    arguments: str | dict[str, Any] = "{}"


class MessageToolCall(Struct, kw_only=True):
    """One entry of an assistant message's `tool_calls`."""

    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


# omit_defaults: the chat template prints tools as JSON, where `"description": null` would be noise.
class FunctionDefinition(Struct, kw_only=True, omit_defaults=True):
    """An OpenAI function tool: name, description and a JSON schema of its parameters."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | bool | None = None
    strict: bool | None = None


class Tool(Struct, kw_only=True):
    """One entry of `tools`; only function tools exist."""

    type: Literal["function"] = "function"
    function: FunctionDefinition


class FunctionName(Struct):
    """`function` of a named tool_choice."""

    name: str


class NamedToolChoice(Struct, kw_only=True):
    """`tool_choice: {"type": "function", "function": {"name": ...}}`: call exactly that function."""

    type: Literal["function"] = "function"
    function: FunctionName


class JSONSchemaSpec(Struct, kw_only=True, omit_defaults=True):
    """`response_format.json_schema`: a named schema; answers are constrained to it (always strict)."""

    name: str
    schema: dict[str, Any] | bool | None = None
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(Struct, kw_only=True, omit_defaults=True):
    """`response_format`: free text, any JSON object, or JSON of a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaSpec | None = None


# ---- responses -------------------------------------------------------------------------------


class FunctionCallOut(Struct):
    """`function` of a generated tool call; `arguments` is JSON text, as OpenAI sends it."""

    name: str
    arguments: str


class ToolCallOut(Struct, kw_only=True):
    """One entry of `message.tool_calls`."""

    id: str
    type: str = "function"
    function: FunctionCallOut


class DeltaFunction(Struct, kw_only=True):
    """`function` of a streamed tool-call piece: the name in the first piece, argument text after."""

    name: str | UnsetType = UNSET
    arguments: str


class DeltaToolCall(Struct, kw_only=True):
    """One piece of a streamed tool call, in OpenAI's shape (id and type only in the first piece)."""

    index: int
    id: str | UnsetType = UNSET
    type: str | UnsetType = UNSET
    function: DeltaFunction
