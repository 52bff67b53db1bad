"""POST /v1/chat/completions: render messages with the chat template, generate, answer or stream."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import Response
from msgspec import UNSET, UnsetType

from engine.outputs import CompletionOutput, TokenLogprob
from server.errors import bad_request
from server.schemas import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatMessageOut,
    DeltaMessage,
    Message,
    TokenLogprobEntry,
    TopLogprob,
    UsageInfo,
)
from server.serving import RequestGroup, ServerState
from server.streaming import DONE, error_event, event, respond

MAX_TOP_LOGPROBS = 20
# Arguments the server sets itself; chat_template_kwargs may not override them.
_RESERVED_TEMPLATE_KWARGS = {"messages", "tools", "add_generation_prompt", "tokenize"}


def template_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Messages as the chat template reads them: text parts joined, tool fields kept."""
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
        for key in ("name", "tool_calls", "tool_call_id"):
            if getattr(m, key) is not None:
                message[key] = getattr(m, key)
        out.append(message)
    return out


def render_chat(state: ServerState, messages: list[Message], chat_template_kwargs: dict[str, Any] | None,
                add_generation_prompt: bool = True) -> list[int]:
    """Prompt token ids of a conversation (400 when the template rejects it)."""
    if not messages:
        raise bad_request("messages must contain at least one message", "messages")
    kwargs = {**state.default_chat_template_kwargs, **(chat_template_kwargs or {})}
    reserved = sorted(_RESERVED_TEMPLATE_KWARGS & kwargs.keys())
    if reserved:
        raise bad_request(f"chat_template_kwargs may not set {', '.join(reserved)}", "chat_template_kwargs")
    # The modes issue adds `tools` and the reasoning flag here.
    try:
        return state.ready_engine().tokenizer.apply_chat_template(
            template_messages(messages), add_generation_prompt=add_generation_prompt, **kwargs)
    except (jinja2.TemplateError, ValueError) as e:
        raise bad_request(f"the chat template rejected the messages: {e}", "messages") from None


def chat_logprobs(state: ServerState, entries: list[TokenLogprob]) -> ChatLogprobs:
    """OpenAI's chat logprobs for sampled tokens."""

    def top(token_id: int, logprob: float) -> TopLogprob:
        text = state.token_text(token_id)
        return TopLogprob(text, logprob, list(text.encode()))

    content = []
    for e in entries:
        text = state.token_text(e.token_id)
        content.append(TokenLogprobEntry(text, e.logprob, list(text.encode()), [top(t, lp) for t, lp in e.top]))
    return ChatLogprobs(content)


async def create_chat_completion(state: ServerState, request: Request) -> Response:
    """Handle one chat completion request."""
    req = await state.read_body(request, ChatCompletionRequest)
    state.check_model(req.model)
    if req.top_logprobs is not None:
        if not req.logprobs:
            raise bad_request("top_logprobs needs logprobs set to true", "top_logprobs")
        if not 0 <= req.top_logprobs <= MAX_TOP_LOGPROBS:
            raise bad_request(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {req.top_logprobs}",
                              "top_logprobs")
    max_tokens = req.max_tokens
    if req.max_completion_tokens is not None:
        if req.max_completion_tokens < 1:
            raise bad_request(f"max_completion_tokens must be at least 1, got {req.max_completion_tokens}",
                              "max_completion_tokens")
        max_tokens = req.max_completion_tokens
    params = state.sampling_params(req, max_tokens, (req.top_logprobs or 0) if req.logprobs else None)
    prompt_ids = render_chat(state, req.messages, req.chat_template_kwargs)
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    group = RequestGroup(state, request_id, [prompt_ids], params)
    created = int(time.time())
    return await respond(request, group, req.stream,
                         lambda: _stream(state, req, group, request_id, created),
                         lambda: _collect(state, req, group, request_id, created))


async def _collect(state: ServerState, req: ChatCompletionRequest, group: RequestGroup, request_id: str,
                   created: int) -> ChatCompletionResponse:
    samples = [CompletionOutput(i, "", []) for i in range(req.n)]
    async for _, out in group.outputs():
        for delta in out.outputs:
            samples[delta.index].extend(delta)
    choices = [
        ChatChoice(s.index, ChatMessageOut("assistant", s.text),
                   chat_logprobs(state, s.logprobs or []) if req.logprobs else None, s.finish_reason, s.stop_reason)
        for s in samples
    ]
    prompt_tokens = len(group.requests[0].prompt_ids)
    completion_tokens = sum(len(s.token_ids) for s in samples)
    usage = UsageInfo(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)
    return ChatCompletionResponse(request_id, created, state.model_name, choices, usage)


async def _stream(state: ServerState, req: ChatCompletionRequest, group: RequestGroup, request_id: str,
                  created: int) -> AsyncIterator[bytes]:
    # With include_usage OpenAI sends "usage": null on every chunk but the last.
    usage: UnsetType | None = None if req.include_usage else UNSET

    def chunk(choice: ChatChunkChoice) -> bytes:
        return event(ChatCompletionChunk(request_id, created, state.model_name, [choice], usage=usage))

    for i in range(req.n):
        yield chunk(ChatChunkChoice(i, DeltaMessage(role="assistant", content="")))
    completion_tokens = 0
    try:
        async for _, out in group.outputs():
            for delta in out.outputs:
                completion_tokens += len(delta.token_ids)
                logprobs = chat_logprobs(state, delta.logprobs) if req.logprobs and delta.logprobs else None
                if delta.text or logprobs is not None:
                    yield chunk(ChatChunkChoice(delta.index, DeltaMessage(content=delta.text), logprobs))
                if delta.finish_reason is not None:
                    yield chunk(ChatChunkChoice(delta.index, DeltaMessage(), finish_reason=delta.finish_reason))
    except Exception as e:
        yield error_event(e)
    if req.include_usage:
        prompt_tokens = len(group.requests[0].prompt_ids)
        yield event(ChatCompletionChunk(request_id, created, state.model_name, [], usage=UsageInfo(
            prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)))
    yield DONE
