"""Fixtures of the playground's browser tests: a real headless Chromium (the system's, from Debian's `chromium`
package, since browsers cannot be downloaded here) driven by Playwright; real uvicorn servers on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import live_server
from playground_page import DESKTOP, KEY, KEYED_MODEL, Console, chromium_path
from playwright.sync_api import Browser, Page, sync_playwright

from server.app import create_app


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = chromium_path()
    if path is None:
        pytest.skip("no system Chromium: `apt-get install -y chromium` (.ci/run installs it), or set $CHROMIUM")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def console() -> Console:
    return Console()


@pytest.fixture
def page(browser: Browser, console: Console) -> Iterator[Page]:
    """A fresh tab (its own sessionStorage) at desktop size; console errors the test did not allow fail it."""
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.on("console", console.message)
    page.on("pageerror", lambda e: console.errors.append(f"uncaught: {e}"))
    yield page
    context.close()
    assert not console.unexpected(), console.errors


@pytest.fixture(scope="module")
def keyed_url(default_engine) -> Iterator[str]:
    """A second app on the module's engine that needs an API key."""
    with live_server(create_app(default_engine, served_model_names=[KEYED_MODEL], api_key=KEY)) as url:
        yield url
