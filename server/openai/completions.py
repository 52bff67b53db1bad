"""POST /v1/completions: prompts as text or token ids, echo, legacy logprobs, streaming."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import Response
from msgspec import UNSET, UnsetType

from engine.core.outputs import CompletionOutput, RequestOutput, TokenLogprob
from server.errors import bad_request
from server.openai.schemas import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    PromptTokensDetails,
    UsageInfo,
)
from server.openai.serving import RequestGroup, ServerState
from server.openai.streaming import DONE, error_event, event, respond

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for legacy completions


def prompt_inputs(state: ServerState, prompt: str | list[str | int | list[int]]) -> list[tuple[str | None, list[int]]]:
    """(text if given as text, token ids) per prompt; 400 for an empty or mixed list, or too many prompts."""
    tokenizer = state.ready_engine().tokenizer
    if isinstance(prompt, list) and not all(isinstance(p, int) for p in prompt):
        state.limits.check_count("prompt", len(prompt), state.limits.max_prompts, "--max-prompts-per-request")
    if isinstance(prompt, str):
        return [(prompt, tokenizer.encode(prompt))]
    if prompt and all(isinstance(p, str) for p in prompt):
        return [(p, tokenizer.encode(p)) for p in prompt]
    if prompt and all(isinstance(p, int) for p in prompt):
        return [(None, list(prompt))]
    if prompt and all(isinstance(p, list) for p in prompt):
        return [(None, p) for p in prompt]
    raise bad_request("prompt must be a string, a non-empty list of strings, a list of token ids, "
                      "or a list of lists of token ids", "prompt")


def completion_logprobs(state: ServerState, entries: list[TokenLogprob], offset: int,
                        first_prompt_token: int | None = None) -> CompletionLogprobs:
    """Legacy logprobs; each top_logprobs dict also holds the sampled token (as OpenAI and vLLM do).

    With echo, the first prompt token (which nothing predicts) comes first with null logprobs."""
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top: list[dict[str, float] | None] = []
    offsets: list[int] = []
    if first_prompt_token is not None:
        text = state.token_text(first_prompt_token)
        tokens.append(text)
        token_logprobs.append(None)
        top.append(None)
        offsets.append(offset)
        offset += len(text)
    for e in entries:
        text = state.token_text(e.token_id)
        tokens.append(text)
        token_logprobs.append(e.logprob)
        top.append({**{state.token_text(t): lp for t, lp in e.top}, text: e.logprob})
        offsets.append(offset)
        offset += len(text)
    return CompletionLogprobs(tokens, token_logprobs, top, offsets)


def echo_logprobs(state: ServerState, out: RequestOutput,
                  generated: list[TokenLogprob] | None = None) -> CompletionLogprobs:
    """Legacy logprobs of an echoed prompt (its first token, then every later one), then of `generated`."""
    scored = [e for e in out.prompt_logprobs[1:] if e is not None]
    return completion_logprobs(state, scored + (generated or []), 0, first_prompt_token=out.prompt_token_ids[0])


def _scored(delta: CompletionOutput) -> CompletionOutput:
    """What a prompt-scoring request (echo with max_tokens 0) shows of a delta: no generated token."""
    return CompletionOutput(delta.index, "", [], [], "length" if delta.finish_reason is not None else None)


async def create_completion(state: ServerState, request: Request) -> Response:
    """Handle one completions request (one engine request per prompt)."""
    req = await state.read_body(request, CompletionRequest)
    state.check_model(req.model)
    # echo with max_tokens 0 scores the prompt (lm-eval-harness asks so): one token is computed, then dropped
    score_only = req.echo and req.max_tokens == 0
    max_tokens = 1 if score_only else req.max_tokens if req.max_tokens is not None else DEFAULT_MAX_TOKENS
    # with echo, the echoed prompt tokens get their logprobs too
    params = state.sampling_params(req, max_tokens, req.logprobs,
                                   prompt_logprobs=req.logprobs if req.echo else None)
    inputs = await state.limits.run("tokenizing the prompts", lambda: prompt_inputs(state, req.prompt))
    tokenizer = state.ready_engine().tokenizer
    echoes = [(text if text is not None else tokenizer.decode(ids, skip_special_tokens=False)) if req.echo else ""
              for text, ids in inputs]
    request_id = f"cmpl-{uuid.uuid4().hex}"
    group = RequestGroup(state, request_id, [ids for _, ids in inputs], params)
    created = int(time.time())
    return await respond(request, group, req.stream,
                         lambda: _stream(state, req, group, echoes, request_id, created, score_only),
                         lambda: _collect(state, req, group, echoes, request_id, created, score_only))


def _usage(group: RequestGroup, completion_tokens: int, cached_tokens: dict[int, int]) -> UsageInfo:
    prompt_tokens = sum(len(r.prompt_ids) for r in group.requests)
    return UsageInfo(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens,
                     prompt_tokens_details=PromptTokensDetails(sum(cached_tokens.values())))


async def _collect(state: ServerState, req: CompletionRequest, group: RequestGroup, echoes: list[str],
                   request_id: str, created: int, score_only: bool) -> CompletionResponse:
    n = req.n
    samples = [CompletionOutput(i, "", []) for i in range(n * len(echoes))]
    scored: list[RequestOutput | None] = [None] * len(echoes)  # the output that carried prompt logprobs
    cached_tokens: dict[int, int] = {}  # per prompt
    async for prompt, out in group.outputs():
        cached_tokens[prompt] = out.num_cached_tokens
        if out.prompt_logprobs is not None:
            scored[prompt] = out
        for delta in out.outputs:
            samples[prompt * n + delta.index].extend(_scored(delta) if score_only else delta)

    def logprobs(i: int, s: CompletionOutput) -> CompletionLogprobs | None:
        if req.logprobs is None:
            return None
        if (out := scored[i // n]) is not None:
            return echo_logprobs(state, out, s.logprobs)
        return completion_logprobs(state, s.logprobs or [], 0)

    choices = [CompletionChoice(i, echoes[i // n] + s.text, logprobs(i, s), s.finish_reason, s.stop_reason)
               for i, s in enumerate(samples)]
    usage = _usage(group, sum(len(s.token_ids) for s in samples), cached_tokens)
    return CompletionResponse(request_id, created, state.model_name, choices, usage=usage)


async def _stream(state: ServerState, req: CompletionRequest, group: RequestGroup, echoes: list[str],
                  request_id: str, created: int, score_only: bool) -> AsyncIterator[bytes]:
    usage: UnsetType | None = None if req.include_usage else UNSET
    n = req.n

    def chunk(choice: CompletionChoice) -> bytes:
        return event(CompletionResponse(request_id, created, state.model_name, [choice], usage=usage))

    # With logprobs, an echo waits for its prompt logprobs, which come with the prompt's first output.
    echo_later = req.logprobs is not None
    for i in range(n * len(echoes)):
        if echoes[i // n] and not echo_later:
            yield chunk(CompletionChoice(i, echoes[i // n], None, None))
    offsets = [len(echoes[i // n]) for i in range(n * len(echoes))]
    completion_tokens = 0
    cached_tokens: dict[int, int] = {}
    try:
        async for prompt, out in group.outputs():
            cached_tokens[prompt] = out.num_cached_tokens
            if echo_later and out.prompt_logprobs is not None:
                echoed = echo_logprobs(state, out)
                for i in range(prompt * n, prompt * n + n):
                    yield chunk(CompletionChoice(i, echoes[prompt], echoed, None))
            for delta in out.outputs:
                delta = _scored(delta) if score_only else delta
                index = prompt * n + delta.index
                completion_tokens += len(delta.token_ids)
                logprobs = None
                if req.logprobs is not None and delta.logprobs:
                    logprobs = completion_logprobs(state, delta.logprobs, offsets[index])
                    offsets[index] += sum(len(t) for t in logprobs.tokens)
                if delta.text or logprobs is not None or delta.finish_reason is not None:
                    yield chunk(CompletionChoice(index, delta.text, logprobs, delta.finish_reason, delta.stop_reason))
    except Exception as e:
        yield error_event(e)
    if req.include_usage:
        yield event(CompletionResponse(request_id, created, state.model_name, [], usage=_usage(group, completion_tokens, cached_tokens)))
    yield DONE
