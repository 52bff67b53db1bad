"""The playground: one page at `/` (plain HTML, CSS and JavaScript shipped beside this file) that chats through
the server's own OpenAI endpoints from the browser; it keeps nothing on the server."""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.responses import Response

from server.errors import APIError

ASSETS = {"app.js": "text/javascript; charset=utf-8", "messages.js": "text/javascript; charset=utf-8",
          "request.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
# The page runs only its own files and talks only to this server: no CDN script, web font or inline
# code can load, so it works offline and a model's output can never become markup that runs.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                           "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


def install_playground(app: FastAPI) -> None:
    """Serve the page at `/` and its assets under `/playground/`; neither needs the API key (the page asks
    for it, and every API call it makes sends it), and neither shows in /openapi.json."""
    root = files(__package__)
    index = root.joinpath("index.html").read_bytes()
    assets = {name: root.joinpath(name).read_bytes() for name in ASSETS}

    @app.get("/", include_in_schema=False)
    async def playground() -> Response:
        return Response(index, media_type="text/html; charset=utf-8", headers=HEADERS)

    @app.get("/playground/{name}", include_in_schema=False)
    async def playground_asset(name: str) -> Response:
        if name not in assets:
            raise APIError(404, f"no playground file {name!r}", type="not_found_error")
        return Response(assets[name], media_type=ASSETS[name], headers=HEADERS)
