"""The FastAPI app: routes, auth, health and metrics; the model may load after the app starts."""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from msgspec import UNSET
from prometheus_client import CONTENT_TYPE_LATEST

from engine.core.async_engine import AsyncEngine
from engine.modes.reasoning import DEFAULT_ANSWER_RESERVE
from server.errors import APIError, bad_request, install_error_handlers
from server.limits import RequestLimits
from server.openai.chat import create_chat_completion
from server.openai.chat_modes import offered_tools
from server.openai.completions import create_completion
from server.openai.responses import create_response, not_stored
from server.openai.schemas import (
    DEFAULT_MAX_REQUEST_BODY_BYTES,
    DetokenizeRequest,
    DetokenizeResponse,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
    encode,
)
from server.openai.serving import ServerState
from server.openapi import install_openapi
from server.playground import install_playground

logger = logging.getLogger(__name__)


def _json(obj: Any) -> Response:
    return Response(encode(obj), media_type="application/json")


def create_app(engine: AsyncEngine | None, *, served_model_names: list[str], api_key: str | None = None,
               max_request_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES,
               default_chat_template_kwargs: dict[str, Any] | None = None,
               max_thinking_tokens: int | None = None, reasoning_answer_reserve: float = DEFAULT_ANSWER_RESERVE,
               thinking_deadline_ms: int | None = None,
               limits: RequestLimits | None = None, ui: bool = True) -> FastAPI:
    """Build the app; with engine=None it answers 503 until `attach_engine` hands it one; `ui` serves the
    playground page at `/` (server/playground).

    The app never stops the engine: whoever made the engine shuts it down. Raises ValueError for
    defaults no request could use (a non-boolean enable_thinking, a negative max_thinking_tokens).
    """
    state = ServerState(list(served_model_names), api_key, max_request_body_bytes,
                        dict(default_chat_template_kwargs or {}), max_thinking_tokens, engine,
                        reasoning_answer_reserve, thinking_deadline_ms, limits or RequestLimits())
    started = int(time.time())

    app = FastAPI(title="exaone-serve")
    app.state.server = state
    install_error_handlers(app)
    install_openapi(app)

    async def authorize(request: Request) -> None:
        if state.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        # compare_digest takes the same time wherever the strings differ, so timing reveals nothing
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), state.api_key.encode()):
            raise APIError(401, "missing or invalid API key; send `Authorization: Bearer <key>`",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    async def admitting() -> None:
        # After SIGTERM (server/shutdown.py) the replica finishes what it has and takes nothing new.
        if state.engine is not None and state.engine.draining:
            raise APIError(503, "the server is shutting down (draining its requests); send requests elsewhere",
                           type="server_error", code="draining", headers={"Retry-After": "1"})

    @app.get("/health")
    async def health() -> Response:
        """200 once the model is loaded and the engine runs; 503 while loading or draining, 500 if the engine died."""
        state.ready_engine()
        await admitting()
        return Response(status_code=200)

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus exposition (open, like /health)."""
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    api = APIRouter(dependencies=[Depends(admitting), Depends(authorize)])

    @api.get("/v1/models")
    async def models() -> Response:
        """The served model under each of its names."""
        engine = state.ready_engine().engine
        # root names the served model, never a path on this machine
        cards = [ModelCard(name, started, state.model_name, engine.config.max_model_len)
                 for name in state.served_model_names]
        return _json(ModelList(cards))

    @api.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        """OpenAI chat completions."""
        return await create_chat_completion(state, request)

    @api.post("/v1/completions")
    async def completions(request: Request) -> Response:
        """OpenAI (legacy) completions."""
        return await create_completion(state, request)

    @api.post("/v1/responses")
    async def responses(request: Request) -> Response:
        """OpenAI Responses API (stateless: nothing is stored)."""
        return await create_response(state, request)

    @api.get("/v1/responses/{response_id}")
    @api.delete("/v1/responses/{response_id}")
    @api.post("/v1/responses/{response_id}/cancel")
    @api.get("/v1/responses/{response_id}/input_items")
    async def stored_response(response_id: str) -> Response:
        """404: responses are never stored, so none can be read, deleted or cancelled."""
        raise not_stored(response_id)

    @api.post("/tokenize")
    async def tokenize(request: Request) -> Response:
        """Token ids of a prompt, or of chat messages rendered with the chat template (vLLM's shape)."""
        req = await state.read_body(request, TokenizeRequest)
        state.check_model(req.model)
        engine = state.ready_engine()
        if (req.prompt is None) == (req.messages is None):
            raise bad_request("pass exactly one of prompt and messages", "prompt")
        if req.messages is not None:
            state.limits.check_chat(req.messages, req.tools, None, req.chat_template_kwargs)
            modes = state.ready_modes()
            mode = modes.mode(reasoning=req.reasoning, chat_template_kwargs=req.chat_template_kwargs,
                              reasoning_effort=req.reasoning_effort)
            tools = offered_tools(req.tools, req.tool_choice)
            prompt, tokens = await state.limits.run("rendering the chat template", lambda: modes.render_text(
                req.messages, mode, tools, req.chat_template_kwargs, req.add_generation_prompt))
        else:
            prompt = UNSET  # the request's own text: nothing to show that the client does not have
            tokens = await state.limits.run("tokenizing the prompt", lambda: engine.tokenizer.encode(
                req.prompt, add_special_tokens=req.add_special_tokens))
        strs = engine.tokenizer.hf.convert_ids_to_tokens(tokens) if req.return_token_strs else None
        return _json(TokenizeResponse(len(tokens), engine.engine.config.max_model_len, tokens, strs, prompt))

    @api.post("/detokenize")
    async def detokenize(request: Request) -> Response:
        """Text of token ids, special tokens included (as vLLM decodes them): a rendered prompt comes back whole."""
        req = await state.read_body(request, DetokenizeRequest)
        state.check_model(req.model)
        engine = state.ready_engine()
        vocab = engine.engine.model_config.vocab_size
        if any(not 0 <= t < vocab for t in req.tokens):
            raise bad_request(f"token ids must be in [0, {vocab})", "tokens")
        return _json(DetokenizeResponse(engine.tokenizer.decode(req.tokens, skip_special_tokens=False)))

    @api.post("/reset_prefix_cache")
    async def reset_prefix_cache() -> Response:
        """Forget every cached prefix (admin; before timing cold runs, or after changing weights)."""
        state.ready_engine().reset_prefix_cache()
        return Response(status_code=200)

    app.include_router(api)
    if ui:
        install_playground(app)
    return app


def attach_engine(app: FastAPI, engine: AsyncEngine) -> None:
    """Hand a loaded engine to an app created without one; /health turns 200 once its mode pieces are built."""
    app.state.server.attach(engine)

