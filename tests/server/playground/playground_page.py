"""Driving the playground page as a user does: through labels, roles and keys; screenshots of its states."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from playwright.sync_api import ConsoleMessage, Locator, Page

KEY = "sk-playground-test-0123"  # the API key of the keyed server
KEYED_MODEL = "keyed"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# Set PLAYGROUND_SCREENSHOTS to keep them elsewhere; test-results/ is ignored by git.
SCREENSHOTS = Path(os.environ.get("PLAYGROUND_SCREENSHOTS", Path(__file__).parents[3] / "test-results" / "playground"))


def chromium_path() -> str | None:
    """The system Chromium: $CHROMIUM, else `chromium` (Debian) or `chromium-browser` on PATH."""
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


class Console:
    """The page's console errors and uncaught exceptions (a CSP violation shows here too)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.allowed: str | None = None  # a test that expects some errors (401s) names their text


    def message(self, message: ConsoleMessage) -> None:
        """Record an error message (page.on("console"))."""
        if message.type == "error":
            self.errors.append(message.text)

    def unexpected(self) -> list[str]:
        """Errors whose text does not contain `allowed`."""
        return [e for e in self.errors if self.allowed is None or self.allowed not in e]


def shot(page: Page, name: str) -> Path:
    """Save a screenshot of the page's current state under SCREENSHOTS."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=path)
    return path


def open_playground(page: Page, base_url: str, ready: bool = True) -> None:
    """Load `/`; with ready, wait until the page has listed the served model."""
    response = page.goto(f"{base_url}/")
    assert response is not None and response.status == 200
    if ready:
        page.locator("#model option").first.wait_for(state="attached")  # a locator: no eval under the page's CSP


def settings(page: Page, **fields: str) -> None:
    """Fill sampling fields by their labels: temperature, max_tokens, ..."""
    for label, value in fields.items():
        page.get_by_label(label, exact=True).fill(value)


def send(page: Page, text: str, key: str | None = "Enter") -> Locator:
    """Type a message and send it (Enter, or the Send button when key is None); the new assistant message."""
    before = page.locator("article.assistant").count()
    box = page.get_by_label("Message", exact=True)
    box.fill(text)
    if key is None:
        page.get_by_role("button", name="Send", exact=True).click()
    else:
        box.press(key)
    return page.locator("article.assistant").nth(before)


def finished(message: Locator) -> str:
    """Wait until an assistant message has ended; its meta line (finish_reason, tokens)."""
    meta = message.locator(".meta")
    meta.wait_for()
    return meta.inner_text()


def stat(page: Page, name: str) -> str:
    """One value of the statistics strip (TTFT, tok/s, prompt, cached, reasoning, running, waiting, KV use)."""
    return page.locator(".stats div", has=page.locator("dt", has_text=name)).locator("dd").inner_text()
