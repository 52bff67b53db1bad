"""/openapi.json with the real request bodies: the msgspec Structs' JSON schemas, for client generators and fuzzers."""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import FastAPI

from server.openai.schemas import ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest

# POST route -> its body; the handlers read bodies themselves (msgspec), so FastAPI cannot see them.
REQUEST_BODIES: dict[str, type[msgspec.Struct]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/tokenize": TokenizeRequest,
    "/detokenize": DetokenizeRequest,
}
_REF = "#/components/schemas/{name}"


def request_body_schemas() -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """(route -> `$ref` schema of its body, the components those refer to)."""
    refs, components = msgspec.json.schema_components(list(REQUEST_BODIES.values()), ref_template=_REF)
    return dict(zip(REQUEST_BODIES, refs, strict=True)), components


def install_openapi(app: FastAPI) -> None:
    """Make app.openapi() describe every POST body (application/json, as the server requires)."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = base()
        refs, components = request_body_schemas()
        schema.setdefault("components", {}).setdefault("schemas", {}).update(components)
        for path, ref in refs.items():
            operation = schema.get("paths", {}).get(path, {}).get("post")
            if operation is not None:
                operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref}}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
