"""The playground's files as the server ships them: `/` and its assets, offline-only, `--no-ui`, the API unchanged."""

from __future__ import annotations

import re
from importlib.resources import files

import httpx2
import pytest
from harness import assert_openai_error, live_server
from playground_page import open_playground, shot

from server.app import create_app
from server.cli import build_parser
from server.playground import ASSETS, CONTENT_SECURITY_POLICY

NAMES = ["m"]


@pytest.fixture(scope="module")
def loading_url():
    """An app still waiting for its model (as `exaone-serve serve` is for its first seconds)."""
    with live_server(create_app(None, served_model_names=NAMES)) as url:
        yield url


def test_page_and_assets_are_served_with_a_policy_that_allows_only_this_server(loading_url):
    page = httpx2.get(f"{loading_url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    texts = page.text
    for name, media_type in ASSETS.items():
        r = httpx2.get(f"{loading_url}/playground/{name}")
        assert r.status_code == 200 and r.headers["content-type"] == media_type and r.content
        assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        texts += r.text
    assert all(f"/{name}" in texts for name in ASSETS)  # every asset is used (index.html, or app.js's import)
    assert_openai_error(httpx2.get(f"{loading_url}/playground/secret.txt"), 404)
    assert "/" not in httpx2.get(f"{loading_url}/openapi.json").json()["paths"]  # not part of the API


def test_shipped_files_fetch_nothing_from_elsewhere():
    root = files("server.playground")
    for name in ("index.html", *ASSETS):
        text = root.joinpath(name).read_text()
        # no absolute URL (CDN, font, analytics), no protocol-relative one, no inline script or style
        assert not re.search(r"""(src|href)\s*=\s*["'](https?:)?//|url\(\s*["']?(https?:)?//|@import""", text), name
        assert "<script>" not in text and "<style" not in text and " style=" not in text, name


def test_no_ui_leaves_the_api_as_it_was(loading_url):
    with live_server(create_app(None, served_model_names=NAMES, ui=False)) as url:
        assert_openai_error(httpx2.get(f"{url}/"), 404)
        assert_openai_error(httpx2.get(f"{url}/playground/app.js"), 404)
        assert httpx2.get(f"{url}/openapi.json").json() == httpx2.get(f"{loading_url}/openapi.json").json()
        assert_openai_error(httpx2.get(f"{url}/v1/models"), 503)
    assert build_parser().parse_args(["serve", "--no-ui"]).ui is False
    assert build_parser().parse_args(["serve"]).ui is True


UNLABELLED = """() => [...document.querySelectorAll("input, select, textarea, button")]
  .filter((e) => !(e.labels?.length || e.getAttribute("aria-label") || e.textContent.trim())).map((e) => e.id)"""


def test_page_loads_before_the_model_and_labels_every_control(page, console, loading_url):
    console.allowed = "503"  # the browser logs each /v1/models answered while loading
    open_playground(page, loading_url, ready=False)
    page.get_by_text("The model is loading…").wait_for()
    assert page.locator("#key-form").is_hidden()  # a server without a key never asks for one
    assert page.evaluate(UNLABELLED) == []
    shot(page, "0-model-loading")
