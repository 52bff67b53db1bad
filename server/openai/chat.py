"""POST /v1/chat/completions: render messages with the chat template, generate, answer or stream."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import Response
from msgspec import UNSET, UnsetType

from engine.core.outputs import CompletionOutput, TokenLogprob
from engine.core.sampling_params import SamplingParams
from server.errors import bad_request
from server.limits import MAX_TOP_LOGPROBS
from server.openai.chat_modes import ChatPlan
from server.openai.schemas import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    CompletionTokensDetails,
    DeltaMessage,
    PromptTokensDetails,
    TokenLogprobEntry,
    TopLogprob,
    UsageInfo,
)
from server.openai.serving import RequestGroup, ServerState
from server.openai.streaming import DONE, error_event, event, respond


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
    plan, params, prompt_ids = await prepare_chat(state, req, max_tokens,
                                                  (req.top_logprobs or 0) if req.logprobs else None)
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    group = RequestGroup(state, request_id, [prompt_ids], params)
    created = int(time.time())
    return await respond(request, group, req.stream,
                         lambda: _stream(state, req, plan, group, request_id, created),
                         lambda: _collect(state, req, plan, group, request_id, created))


async def prepare_chat(state: ServerState, req: ChatCompletionRequest, max_tokens: int | None,
                       logprobs: int | None) -> tuple[ChatPlan, SamplingParams, list[int]]:
    """Limits, the mode plan, sampling params and the rendered prompt of a chat request (also the
    Responses API's); schema checks, grammar compilation, rendering and tokenisation run off the event loop."""
    state.limits.check_chat(req.messages, req.tools, req.response_format, req.chat_template_kwargs)
    modes = state.ready_modes()
    plan = await state.limits.run("building the grammar for tools/response_format", lambda: modes.plan(req, max_tokens))
    params = state.sampling_params(req, max_tokens, logprobs, plan.sampling_defaults, plan.factories)
    params.reasoning = plan.mode.enabled  # its lane under --scheduling-policy mode-aware
    prompt_ids = await state.limits.run("rendering the chat template", lambda: modes.render(
        req.messages, plan.mode, plan.tools, req.chat_template_kwargs))
    return plan, params, prompt_ids


def _usage(plan: ChatPlan, group: RequestGroup, outputs: list[list[int]], cached_tokens: int) -> UsageInfo:
    prompt_tokens = len(group.requests[0].prompt_ids)
    completion_tokens = sum(len(ids) for ids in outputs)
    reasoning_tokens = sum(plan.reasoning_tokens(ids) for ids in outputs)
    return UsageInfo(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens,
                     CompletionTokensDetails(reasoning_tokens), PromptTokensDetails(cached_tokens))


async def _collect(state: ServerState, req: ChatCompletionRequest, plan: ChatPlan, group: RequestGroup,
                   request_id: str, created: int) -> ChatCompletionResponse:
    samples = [CompletionOutput(i, "", []) for i in range(req.n)]
    cached_tokens = 0
    async for _, out in group.outputs():
        cached_tokens = out.num_cached_tokens
        for delta in out.outputs:
            samples[delta.index].extend(delta)
    choices = []
    for s in samples:
        splitter = plan.splitter()
        cut = plan.reasoning_cut(s.index)
        message = splitter.message(s.text, cut)
        state.metrics.count_reasoning_cut(cut)
        logprobs = chat_logprobs(state, s.logprobs or []) if req.logprobs else None
        choices.append(ChatChoice(s.index, message, logprobs, splitter.finish_reason(s.finish_reason), s.stop_reason))
    usage = _usage(plan, group, [s.token_ids for s in samples], cached_tokens)
    return ChatCompletionResponse(request_id, created, state.model_name, choices, usage)


async def _stream(state: ServerState, req: ChatCompletionRequest, plan: ChatPlan, group: RequestGroup,
                  request_id: str, created: int) -> AsyncIterator[bytes]:
    # With include_usage OpenAI sends "usage": null on every chunk but the last.
    usage: UnsetType | None = None if req.include_usage else UNSET

    def chunk(choice: ChatChunkChoice) -> bytes:
        return event(ChatCompletionChunk(request_id, created, state.model_name, [choice], usage=usage))

    for i in range(req.n):
        yield chunk(ChatChunkChoice(i, DeltaMessage(role="assistant", content="")))
    splitters = [plan.splitter() for _ in range(req.n)]
    outputs: list[list[int]] = [[] for _ in range(req.n)]
    cached_tokens = 0
    try:
        async for _, out in group.outputs():
            cached_tokens = out.num_cached_tokens
            for delta in out.outputs:
                splitter = splitters[delta.index]
                outputs[delta.index] += delta.token_ids
                piece = splitter.feed(delta.text)
                if delta.finish_reason is not None:
                    piece.extend(splitter.finish())
                logprobs = chat_logprobs(state, delta.logprobs) if req.logprobs and delta.logprobs else None
                if piece or logprobs is not None:
                    yield chunk(ChatChunkChoice(delta.index, piece.delta(), logprobs))
                if delta.finish_reason is not None:
                    cut = plan.reasoning_cut(delta.index)
                    state.metrics.count_reasoning_cut(cut)
                    yield chunk(ChatChunkChoice(delta.index, DeltaMessage(reasoning_cut=cut or UNSET),
                                                finish_reason=splitter.finish_reason(delta.finish_reason)))
    except Exception as e:
        yield error_event(e)
    if req.include_usage:
        yield event(ChatCompletionChunk(request_id, created, state.model_name, [],
                                        usage=_usage(plan, group, outputs, cached_tokens)))
    yield DONE
