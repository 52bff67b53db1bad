"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}} with the matching status."""

from __future__ import annotations

import logging
import re

import msgspec
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

# msgspec names the offending field at the end of its messages: "... - at `$.messages[0].role`".
_MSGSPEC_PATH = re.compile(r" - at `\$\.?([^`]*)`$")


class APIError(Exception):
    """An error answered to the client as OpenAI would answer it."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict[str, dict[str, str | None]]:
        """The JSON body OpenAI clients parse."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> Response:
        """This error as an HTTP response."""
        return Response(msgspec.json.encode(self.body()), status_code=self.status,
                        media_type="application/json", headers=self.headers)


def bad_request(message: str, param: str | None = None) -> APIError:
    """400 for a request that is malformed or asks for something impossible."""
    return APIError(400, message, param=param)


def from_validation(exc: msgspec.ValidationError | msgspec.DecodeError) -> APIError:
    """400 from a msgspec decode error, naming the field when msgspec does."""
    message = str(exc)
    if isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError):
        return bad_request(f"invalid JSON body: {message}")
    match = _MSGSPEC_PATH.search(message)
    # a value inside a dict shows as `logit_bias[...]`: the field is what the client can act on
    param = (match.group(1).replace("[...]", "") or None) if match else None
    if message.startswith("Object missing required field"):
        # "Object missing required field `function` - at `$.tools[0]`": the path is the field's parent
        field = re.search(r"`([^`]+)`", message)
        if field:
            param = f"{param}.{field.group(1)}" if param else field.group(1)
    return bad_request(message, param)


def from_value_error(exc: ValueError, fields: set[str]) -> APIError:
    """400 from a ValueError raised by SamplingParams or the engine; its first word is often the field."""
    message = str(exc)
    first = message.split(" ", 1)[0]
    return bad_request(message, first if first in fields else None)


def install_error_handlers(app: FastAPI) -> None:
    """Route every error the app can raise to OpenAI's error shape."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        first = errors[0] if errors else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return bad_request(first.get("msg", "invalid request"), param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return APIError(exc.status_code, str(exc.detail), type=kind, headers=exc.headers).response()

    @app.exception_handler(Exception)
    async def _internal_error(_: Request, exc: Exception) -> Response:
        # The exception text stays in the log: it may show paths or internals to a client.
        logger.exception("unhandled error")
        return APIError(500, "internal server error (see the server log)", type="server_error",
                        code="internal_error").response()
