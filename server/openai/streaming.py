"""Server-sent events as OpenAI streams them, and the one place that turns a handler's result into a response."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from sse_starlette.sse import EventSourceResponse
from starlette.types import Receive, Scope, Send

from server.errors import APIError
from server.openai.schemas import encode
from server.openai.serving import RequestGroup, engine_error, until_disconnected

logger = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"
# nginx's code for "client closed request"; nobody reads it, it only shows in access logs.
CLIENT_CLOSED = 499


def event(obj: Any) -> bytes:
    """One `data:` event holding `obj` as JSON."""
    return b"data: " + encode(obj) + b"\n\n"


def error_event(exc: Exception) -> bytes:
    """The event that reports an error once the stream has started (the status is already 200)."""
    error = engine_error(exc)
    if not isinstance(exc, APIError) and error.status >= 500:
        logger.error("stream failed: %s", exc)
    return event(error.body())


class EngineEventStream(EventSourceResponse):
    """An SSE response that closes (aborts) its engine requests however the stream ends."""

    def __init__(self, content: AsyncIterator[bytes], group: RequestGroup) -> None:
        # sse-starlette cancels open streams when uvicorn starts to exit; ours always end on their own (the
        # drain in server/shutdown.py cuts them with a last chunk), so it waits for them instead.
        super().__init__(content, shutdown_grace_period=math.inf)
        self._group = group

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Also covers a client gone before the body iterator started, when its own cleanup never runs.
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._group.close()


async def respond(request: Request, group: RequestGroup, stream: bool,
                  events: Callable[[], AsyncIterator[bytes]], body: Callable[[], Awaitable[Any]]) -> Response:
    """Stream `events()` as SSE, or answer `await body()` as JSON; a client that leaves aborts either way."""
    if stream:
        return EngineEventStream(events(), group)
    try:
        result = await until_disconnected(request, body())
    finally:
        group.close()
    if result is None:
        return Response(status_code=CLIENT_CLOSED)
    if any(r.engine.was_cut(r.request_id) for r in group.requests):
        # still running at the shutdown deadline: streams end with finish_reason "abort", bodies with this
        raise APIError(503, "the server shut down before this request finished; retry it", type="server_error",
                       code="shutdown", headers={"Retry-After": "1"})
    return Response(encode(result), media_type="application/json")
