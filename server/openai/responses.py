"""POST /v1/responses: OpenAI's Responses API on the chat machinery (same plan, template, split, tool parsing).

The request becomes a ChatCompletionRequest; one sample's split pieces become output items (reasoning,
message, function_call), streamed as the SDK's typed events. The same builder serves streaming and not,
so a greedy response is the same either way. Nothing is stored: `store`, `previous_response_id`,
`conversation` and `background` are refused with a 400 naming the field.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
from fastapi import Request
from fastapi.responses import Response
from msgspec import UNSET

from server.errors import APIError, bad_request, from_validation
from server.openai.chat import prepare_chat
from server.openai.chat_modes import ChatPlan, Piece
from server.openai.responses_schemas import (
    ContentPart,
    FunctionCallInput,
    FunctionCallItem,
    FunctionCallOutputInput,
    FunctionToolChoice,
    IncompleteDetails,
    InputMessage,
    MessageItem,
    OutputItem,
    OutputText,
    OutputTokensDetails,
    ReasoningItem,
    ReasoningText,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
    TextConfig,
    TextFormat,
)
from server.openai.schemas import ChatCompletionRequest, Message, encode
from server.openai.serving import RequestGroup, ServerState, engine_error
from server.openai.streaming import respond
from server.openai.tool_schemas import (
    FunctionCall,
    FunctionDefinition,
    FunctionName,
    JSONSchemaSpec,
    MessageToolCall,
    NamedToolChoice,
    ResponseFormat,
    Tool,
)

logger = logging.getLogger(__name__)

UNSUPPORTED = ("store", "previous_response_id", "conversation", "background")
_TEXT_PARTS = {"input_text", "output_text", "text"}
# Chat's field paths in errors from the shared machinery, as this API names them.
_PARAM_NAMES = [(re.compile(p), r) for p, r in (
    (r"^reasoning_effort", "reasoning.effort"), (r"^tools\[(\d+)\]\.function", r"tools[\1]"),
    (r"^response_format(\.json_schema)?", "text.format"), (r"^max_(completion_)?tokens", "max_output_tokens"),
    (r"^messages.*", "input"))]


def not_stored(response_id: str) -> APIError:
    """The answer to GET / DELETE / cancel of a response: none is ever stored here."""
    return APIError(404, f"no response {response_id!r}: this server stores no responses (store is not "
                    "supported); send the conversation as `input` instead", type="not_found_error",
                    param="response_id", code="response_not_found")


@contextmanager
def responses_params() -> Iterator[None]:
    """Rename chat's field paths in 400s raised inside to this API's (reasoning_effort -> reasoning.effort)."""
    try:
        yield
    except APIError as e:
        for pattern, name in _PARAM_NAMES:
            if e.param is not None and pattern.match(e.param):
                e.param = pattern.sub(name, e.param, count=1)
                break
        raise


def _convert(raw: dict[str, Any], type: type, path: str) -> Any:
    try:
        return msgspec.convert(raw, type)
    except msgspec.ValidationError as e:
        error = from_validation(e)
        raise bad_request(error.message, f"{path}.{error.param}" if error.param else path) from None


def _text(content: str | list[ContentPart], path: str) -> str:
    if isinstance(content, str):
        return content
    for j, part in enumerate(content):
        if part.type not in _TEXT_PARTS or part.text is None:
            raise bad_request(f"only text content parts are served, got type {part.type!r}", f"{path}.content[{j}]")
    return "\n".join(part.text for part in content)


def chat_messages(req: ResponsesRequest) -> list[Message]:
    """`instructions` and `input` as chat messages; calls join the assistant turn they follow."""
    messages = [Message(role="system", content=req.instructions)] if req.instructions else []
    if isinstance(req.input, str):
        return [*messages, Message(role="user", content=req.input)]
    for i, raw in enumerate(req.input):
        kind, path = raw.get("type", "message"), f"input[{i}]"
        if kind == "message":
            m = _convert(raw, InputMessage, path)
            messages.append(Message(role=m.role, content=_text(m.content, path)))
        elif kind == "function_call":
            c = _convert(raw, FunctionCallInput, path)
            call = MessageToolCall(id=c.call_id, function=FunctionCall(c.name, c.arguments))
            if messages and messages[-1].role == "assistant":
                messages[-1].tool_calls = [*(messages[-1].tool_calls or []), call]
            else:
                messages.append(Message(role="assistant", tool_calls=[call]))
        elif kind == "function_call_output":
            o = _convert(raw, FunctionCallOutputInput, path)
            messages.append(Message(role="tool", tool_call_id=o.call_id, content=_text(o.output, f"{path}.output")))
        elif kind != "reasoning":  # earlier thinking is dropped, as chat templates drop it
            raise bad_request(f"input items of type {kind!r} are not served (message, function_call, "
                              "function_call_output, reasoning are)", f"{path}.type")
    return messages


def chat_request(req: ResponsesRequest) -> ChatCompletionRequest:
    """The chat request that asks for the same generation."""
    for name in UNSUPPORTED:
        if getattr(req, name):
            raise bad_request(f"{name} is not supported: this server stores no responses; send the whole "
                              "conversation as `input`", name)
    if req.max_output_tokens is not None and req.max_output_tokens < 1:
        raise bad_request(f"max_output_tokens must be at least 1, got {req.max_output_tokens}", "max_output_tokens")
    fmt = req.text.format if req.text is not None else None
    response_format = None
    if fmt is not None and fmt.type != "text":
        spec = JSONSchemaSpec(name=fmt.name or "response", schema=fmt.schema, description=fmt.description,
                              strict=fmt.strict) if fmt.type == "json_schema" else None
        response_format = ResponseFormat(type=fmt.type, json_schema=spec)
    tools = [Tool(function=FunctionDefinition(name=t.name, description=t.description, parameters=t.parameters,
                                              strict=t.strict)) for t in req.tools] if req.tools else None
    choice = req.tool_choice
    if isinstance(choice, FunctionToolChoice):
        choice = NamedToolChoice(function=FunctionName(choice.name))
    return ChatCompletionRequest(
        messages=chat_messages(req), max_completion_tokens=req.max_output_tokens, temperature=req.temperature,
        top_p=req.top_p, reasoning_effort=req.reasoning.effort if req.reasoning else None, tools=tools,
        tool_choice=choice, parallel_tool_calls=req.parallel_tool_calls, response_format=response_format,
        user=req.user, stream=req.stream)


class OutputItems:
    """One sample's output items, built from its split pieces; every change is also returned as events.

    Reasoning closes when the answer or a call starts; a message opens at the first non-blank answer text
    and stays open; a call closes when the next one opens; close() ends what is still open.
    """

    def __init__(self, reasoning_cut: Callable[[], str | None]) -> None:
        self.items: list[OutputItem] = []
        self._reasoning_cut = reasoning_cut  # what cut the thinking, once the sampler has cut it
        self._open: list[OutputItem] = []
        self._reasoning: ReasoningItem | None = None
        self._message: MessageItem | None = None
        self._call: FunctionCallItem | None = None
        self._blank = ""  # answer whitespace before any message: kept only if real text follows

    def add(self, piece: Piece) -> list[dict[str, Any]]:
        """Events for a piece of one sample's output."""
        # Thinking cut before its first token (a budget of 0, an answer reserve that leaves none) still gets
        # its reasoning item, empty, so the cut has a place to be reported.
        events = self._open_reasoning() if piece.reasoning or self._cut_before_thinking() else []
        if piece.reasoning:
            self._reasoning.content[0].text += piece.reasoning
            events.append(self._delta(self._reasoning, "response.reasoning_text.delta", piece.reasoning))
        if piece.content:
            events += self._answer(piece.content)
        for d in piece.tool_calls:
            if d.id is not None:
                events += self._close(self._reasoning) + self._close(self._call)
                self._call = FunctionCallItem(_id("fc"), d.id, d.name or "", "", "in_progress")
                events += self._added(self._call, {})
            if d.arguments and self._call is not None:
                self._call.arguments += d.arguments
                events.append(self._delta(self._call, "response.function_call_arguments.delta", d.arguments))
        return events

    def close(self, status: str) -> list[dict[str, Any]]:
        """Events that end every open item with `status` (completed or incomplete)."""
        events = self._open_reasoning() if self._cut_before_thinking() else []
        for item in list(self._open):
            item.status = status
            events += self._close(item)
        return events

    def _cut_before_thinking(self) -> bool:
        return not self.items and self._reasoning_cut() is not None

    def _open_reasoning(self) -> list[dict[str, Any]]:
        if self._reasoning is not None:
            return []
        self._reasoning = ReasoningItem(_id("rs"), [], "in_progress")
        return self._added(self._reasoning, {"part": ReasoningText("")})

    def _answer(self, text: str) -> list[dict[str, Any]]:
        events = []
        if self._message is None:
            if not (self._blank + text).strip():
                self._blank += text
                return []
            text, self._blank = self._blank + text, ""
            events = self._close(self._reasoning)
            self._message = MessageItem(_id("msg"), [], "in_progress")
            events += self._added(self._message, {"part": OutputText("")})
        self._message.content[0].text += text
        return [*events, self._delta(self._message, "response.output_text.delta", text, logprobs=[])]

    def _added(self, item: OutputItem, part: dict[str, Any]) -> list[dict[str, Any]]:
        self.items.append(item)
        self._open.append(item)
        # the event shows the item as it starts: no content yet (content is filled in place later)
        snapshot = msgspec.structs.replace(item, content=[]) if part else msgspec.structs.replace(item)
        events = [{"type": "response.output_item.added", "output_index": len(self.items) - 1, "item": snapshot}]
        if part:
            item.content.append(msgspec.structs.replace(part["part"]))
            events.append(self._ref(item, "response.content_part.added", content_index=0, **part))
        return events

    def _close(self, item: OutputItem | None) -> list[dict[str, Any]]:
        if item is None or item not in self._open:
            return []
        self._open.remove(item)
        if item.status == "in_progress":
            item.status = "completed"
        if isinstance(item, ReasoningItem):
            # the sampler decides a cut before the forced end of thinking, so it is known by the time the span closes
            item.reasoning_cut = self._reasoning_cut() or UNSET
        if isinstance(item, FunctionCallItem):
            events = [self._ref(item, "response.function_call_arguments.done", arguments=item.arguments,
                                name=item.name)]
        else:
            part = item.content[0]
            done = "response.reasoning_text.done" if isinstance(item, ReasoningItem) else "response.output_text.done"
            extra = {} if isinstance(item, ReasoningItem) else {"logprobs": []}
            events = [self._ref(item, done, content_index=0, text=part.text, **extra),
                      self._ref(item, "response.content_part.done", content_index=0, part=part)]
        return [*events, {"type": "response.output_item.done", "output_index": self.items.index(item), "item": item}]

    def _delta(self, item: OutputItem, type: str, delta: str, **extra: Any) -> dict[str, Any]:
        content = {} if isinstance(item, FunctionCallItem) else {"content_index": 0}
        return self._ref(item, type, delta=delta, **content, **extra)

    def _ref(self, item: OutputItem, type: str, **fields: Any) -> dict[str, Any]:
        return {"type": type, "item_id": item.id, "output_index": self.items.index(item), **fields}


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


async def create_response(state: ServerState, request: Request) -> Response:
    """Handle one POST /v1/responses."""
    req = await state.read_body(request, ResponsesRequest)
    state.check_model(req.model)
    with responses_params():
        chat = chat_request(req)
        plan, params, prompt_ids = await prepare_chat(state, chat, chat.max_completion_tokens, None)
    response_id = _id("resp")
    group = RequestGroup(state, response_id, [prompt_ids], params)
    response = ResponseObject(
        id=response_id, created_at=int(time.time()), model=state.model_name, status="in_progress", output=[],
        usage=None, instructions=req.instructions, max_output_tokens=req.max_output_tokens,
        temperature=req.temperature, top_p=req.top_p, reasoning=req.reasoning, tools=req.tools or [],
        tool_choice=req.tool_choice or "auto", parallel_tool_calls=req.parallel_tool_calls,
        text=req.text or TextConfig(format=TextFormat(type="text")), metadata=req.metadata or {}, user=req.user)
    return await respond(request, group, req.stream, lambda: _stream(state, plan, group, response),
                         lambda: _collect(state, plan, group, response))


async def _generate(state: ServerState, plan: ChatPlan, group: RequestGroup,
                    response: ResponseObject) -> AsyncIterator[list[dict]]:
    """Run the request, filling `response`; yields the events of each step, then those that close it."""
    items, splitter = OutputItems(lambda: plan.reasoning_cut(0)), plan.splitter()
    response.output = items.items
    token_ids: list[int] = []
    finish_reason = None
    async for _, out in group.outputs():
        for delta in out.outputs:
            token_ids += delta.token_ids
            piece = splitter.feed(delta.text)
            if delta.finish_reason is not None:
                piece.extend(splitter.finish())
                finish_reason = delta.finish_reason
            yield items.add(piece)
    if finish_reason != "stop":  # length (max_output_tokens or the context), or abort (shutdown)
        response.status = "incomplete"
        response.incomplete_details = IncompleteDetails("max_output_tokens" if finish_reason == "length" else None)
    else:
        response.status = "completed"
    prompt_tokens = len(group.requests[0].prompt_ids)
    response.usage = ResponseUsage(prompt_tokens, len(token_ids), prompt_tokens + len(token_ids),
                                   OutputTokensDetails(plan.reasoning_tokens(token_ids)))
    state.metrics.count_reasoning_cut(plan.reasoning_cut(0))
    yield items.close(response.status)


async def _collect(state: ServerState, plan: ChatPlan, group: RequestGroup, response: ResponseObject) -> ResponseObject:
    async for _ in _generate(state, plan, group, response):
        pass
    return response


async def _stream(state: ServerState, plan: ChatPlan, group: RequestGroup,
                  response: ResponseObject) -> AsyncIterator[bytes]:
    numbers = itertools.count()

    def sse(event: dict[str, Any]) -> bytes:
        event["sequence_number"] = next(numbers)
        return b"event: " + event["type"].encode() + b"\ndata: " + encode(event) + b"\n\n"

    yield sse({"type": "response.created", "response": response})
    yield sse({"type": "response.in_progress", "response": response})
    try:
        async for events in _generate(state, plan, group, response):
            for e in events:
                yield sse(e)
    except Exception as exc:
        error = engine_error(exc)
        if error.status >= 500:
            logger.error("response stream failed: %s", exc)
        yield sse({"type": "error", "code": error.code, "message": error.message, "param": error.param})
        return
    yield sse({"type": f"response.{response.status}", "response": response})
