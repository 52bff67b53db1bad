"""Plumbing shared by the chat and completions handlers: state, body parsing, sampling, engine requests."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import msgspec
from fastapi import Request

from engine.core.async_engine import AsyncEngine, EngineDead, EngineOverloaded
from engine.core.outputs import RequestOutput
from engine.core.sampling_params import SamplingParams
from engine.errors import RequestRejected
from engine.modes.reasoning import DEFAULT_ANSWER_RESERVE
from server.errors import APIError, bad_request, from_validation, from_value_error
from server.limits import RequestLimits
from server.metrics import RequestTracker, ServerMetrics
from server.openai.chat_modes import ChatModes, ProcessorFactory
from server.openai.schemas import DEFAULT_MAX_REQUEST_BODY_BYTES, SamplingRequest

logger = logging.getLogger(__name__)

T = TypeVar("T")

_SAMPLING_FIELDS = {f.name for f in fields(SamplingParams)}
# Request fields copied to SamplingParams when given (None means "the engine's default").
_OPTIONAL_SAMPLING = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                      "repetition_penalty", "seed", "stop_token_ids", "priority")


@dataclass
class ServerState:
    """What every handler needs: the engine (None while loading), names, limits, metrics."""

    served_model_names: list[str]
    api_key: str | None = None
    max_request_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES
    default_chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    max_thinking_tokens: int | None = None
    engine: AsyncEngine | None = None
    reasoning_answer_reserve: float = DEFAULT_ANSWER_RESERVE
    thinking_deadline_ms: int | None = None
    limits: RequestLimits = field(default_factory=RequestLimits)
    modes: ChatModes | None = field(default=None, init=False)
    metrics: ServerMetrics = field(init=False)
    _logged_unknown: set[str] = field(default_factory=set, init=False, repr=False)
    _token_texts: dict[int, str] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.metrics = ServerMetrics(lambda: self.engine.stats() if self.engine is not None else None)
        ChatModes.check_server_defaults(self.default_chat_template_kwargs, self.max_thinking_tokens)
        if self.engine is not None:
            self.attach(self.engine)

    def attach(self, engine: AsyncEngine) -> None:
        """Serve `engine`; its mode pieces are built first, so an engine handlers see always has them."""
        self.modes = ChatModes.for_engine(engine, self.default_chat_template_kwargs, self.max_thinking_tokens,
                                          self.reasoning_answer_reserve, self.thinking_deadline_ms)
        self.engine = engine

    @property
    def model_name(self) -> str:
        """The name responses report."""
        return self.served_model_names[0]

    def ready_engine(self) -> AsyncEngine:
        """The engine; 503 while the model loads, 500 once the engine is dead."""
        if self.engine is None:
            raise APIError(503, "the model is still loading; retry shortly", type="server_error",
                           code="model_loading", headers={"Retry-After": "5"})
        if self.engine.error is not None:
            raise APIError(500, f"the engine stopped after an error: {self.engine.error}", type="server_error",
                           code="engine_dead")
        return self.engine

    def ready_modes(self) -> ChatModes:
        """The engine's mode-switching pieces; 503/500 as ready_engine."""
        self.ready_engine()
        assert self.modes is not None  # attach() sets modes before the engine
        return self.modes

    def check_model(self, name: str | None) -> None:
        """404 unless `name` is empty or one of the served names."""
        if name and name not in self.served_model_names:
            raise APIError(404, f"the model `{name}` does not exist; this server serves "
                           f"{', '.join(self.served_model_names)}", param="model", code="model_not_found")

    def token_text(self, token_id: int) -> str:
        """The text of one token as logprobs show it (cached; special tokens included)."""
        text = self._token_texts.get(token_id)
        if text is None:
            text = self._token_texts[token_id] = self.ready_engine().tokenizer.decode(
                [token_id], skip_special_tokens=False)
        return text

    async def read_body(self, request: Request, type: type[T]) -> T:
        """Read at most max_request_body_bytes (413 past it) and decode it as `type` (400 if invalid).

        Only `application/json` is read (415 otherwise): a web page can send text/plain to a local
        server without a CORS preflight, but not JSON."""
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            raise APIError(415, f"send the body as application/json, not {media_type or 'no content type'}",
                           code="unsupported_media_type")
        limit = self.max_request_body_bytes
        too_large = APIError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        body = b"".join(chunks)
        try:
            parsed = msgspec.json.decode(body, type=type)
        except (msgspec.ValidationError, msgspec.DecodeError) as e:
            raise from_validation(e) from None
        except RecursionError:
            raise bad_request("the JSON body nests too deeply") from None
        if logger.isEnabledFor(logging.DEBUG):
            self._log_unknown_fields(body, type)
        return parsed

    def _log_unknown_fields(self, body: bytes, type: type) -> None:
        # Unknown fields are ignored as vLLM ignores them; say so once per field name.
        raw = msgspec.json.decode(body)
        unknown = set(raw) - set(type.__struct_fields__) - self._logged_unknown if isinstance(raw, dict) else set()
        for name in sorted(unknown):
            logger.debug("ignoring unknown request field %r (logged once)", name)
        self._logged_unknown |= unknown

    def sampling_params(self, req: SamplingRequest, max_tokens: int | None, logprobs: int | None,
                        defaults: dict[str, Any] | None = None,
                        factories: list[ProcessorFactory] | None = None,
                        prompt_logprobs: int | None = None) -> SamplingParams:
        """SamplingParams from a request (400 naming the field when a value is out of range).

        `defaults` fill sampling fields the request leaves unset (absent or null); `factories` build
        per-sample logits processors."""
        engine = self.ready_engine().engine
        max_n = min(self.limits.max_n, engine.config.max_num_seqs)
        if req.n > max_n:
            raise bad_request(f"n must be at most {max_n} (the server's --max-n and --max-num-seqs), "
                              f"got {req.n}", "n")
        if req.stream_options is not None and not req.stream:
            raise bad_request("stream_options is only allowed with stream: true", "stream_options")
        self.limits.check_stop(req.stop)
        given = {name: getattr(req, name) for name in _OPTIONAL_SAMPLING if getattr(req, name) is not None}
        if req.logit_bias:
            given["logit_bias"] = _logit_bias(req.logit_bias)
        try:
            return SamplingParams(
                n=req.n, max_tokens=max_tokens, min_tokens=req.min_tokens, stop=req.stop or [],
                ignore_eos=req.ignore_eos, logprobs=logprobs, prompt_logprobs=prompt_logprobs, skip_special_tokens=req.skip_special_tokens,
                include_stop_str_in_output=req.include_stop_str_in_output,
                logits_processor_factories=list(factories or []), **{**(defaults or {}), **given})
        except ValueError as e:
            raise from_value_error(e, _SAMPLING_FIELDS) from None


def _logit_bias(bias: dict[str, float]) -> dict[int, float]:
    """OpenAI's logit_bias (token id as text -> bias); 400 for a key that is not a number (the engine checks
    the ids against the vocabulary)."""
    out = {}
    for key, value in bias.items():
        if not (key.isascii() and key.isdigit() and len(key) < 20):
            raise bad_request(f"logit_bias keys must be token ids, got {key!r}", "logit_bias")
        out[int(key)] = value
    return out


def engine_error(exc: Exception) -> APIError:
    """The HTTP answer to an exception raised by the engine for one request."""
    if isinstance(exc, EngineOverloaded):
        return APIError(503, f"the server is overloaded: {exc}; retry later", type="server_error",
                        code="overloaded", headers={"Retry-After": "1"})
    if isinstance(exc, EngineDead):
        return APIError(500, str(exc), type="server_error", code="engine_dead")
    if isinstance(exc, RequestRejected):
        return bad_request(str(exc), exc.param)
    if isinstance(exc, APIError):
        return exc
    logger.error("request failed: %r", exc)  # the text stays in the log, as for any unhandled error
    return APIError(500, "internal server error (see the server log)", type="server_error", code="internal_error")


class EngineRequest:
    """One prompt in the engine: submitted on construction (errors raise at once), aborted if left early."""

    def __init__(self, state: ServerState, request_id: str, prompt_ids: list[int], params: SamplingParams) -> None:
        self.engine = state.ready_engine()
        self.request_id = request_id
        self.prompt_ids = prompt_ids
        try:
            self._stream = self.engine.submit(prompt_ids, params, request_id)
        except (EngineOverloaded, EngineDead, RequestRejected) as e:
            raise engine_error(e) from None
        self._tracker: RequestTracker = state.metrics.track(len(prompt_ids), params.n)
        self.finished = False
        self.closed = False

    async def outputs(self) -> AsyncIterator[RequestOutput]:
        """The request's deltas until it finishes."""
        async for out in self._stream:
            self._tracker.observe(out)
            if out.finished:
                self.finished = True
                self.close()
            yield out

    def close(self) -> None:
        """Abort the request unless it finished, and close its metrics; safe to call twice."""
        if self.closed:
            return
        self.closed = True
        if not self.finished:
            self.engine.abort(self.request_id)
        self._tracker.finish()


class RequestGroup:
    """The engine requests of one HTTP request (one per prompt), submitted and closed together."""

    def __init__(self, state: ServerState, request_id: str, prompts: list[list[int]],
                 params: SamplingParams) -> None:
        self.requests: list[EngineRequest] = []
        try:
            for i, prompt_ids in enumerate(prompts):
                rid = request_id if len(prompts) == 1 else f"{request_id}-{i}"
                self.requests.append(EngineRequest(state, rid, prompt_ids, params))
        except BaseException:
            self.close()  # what was accepted must not run for nobody
            raise

    async def outputs(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """(prompt index, deltas) of every request, as they come; engine errors become APIError."""
        try:
            if len(self.requests) == 1:
                async for out in self.requests[0].outputs():
                    yield 0, out
                return
            async for item in _merge([r.outputs() for r in self.requests]):
                yield item
        except (EngineDead, RequestRejected) as e:
            raise engine_error(e) from None

    def close(self) -> None:
        """Abort whatever has not finished."""
        for r in self.requests:
            r.close()


async def _merge(streams: list[AsyncIterator[RequestOutput]]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Interleave several streams that each end with a finished output."""
    queue: asyncio.Queue[tuple[int, RequestOutput | Exception]] = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[RequestOutput]) -> None:
        try:
            async for out in stream:
                queue.put_nowait((i, out))
        except Exception as e:
            queue.put_nowait((i, e))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    remaining = len(tasks)
    try:
        while remaining:
            i, item = await queue.get()
            if isinstance(item, Exception):
                raise item
            if item.finished:
                remaining -= 1
            yield i, item
    finally:
        for task in tasks:
            task.cancel()  # leaving early throws into the engine streams, which abort


async def until_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Await `work`, or cancel it (aborting its engine requests) and return None if the client goes away."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        # The body is read already, so the next message can only be the disconnect.
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        logger.info("client disconnected; request aborted")
        return None
    return task.result()
