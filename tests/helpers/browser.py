"""Headless Chromium from Debian's packages, driven by Playwright, for the dashboard's browser tests.

Playwright's own browser download does not work everywhere, so the browser is the system's ``chromium``
(``make browser`` installs it with apt when it is missing and the user is root), or ``EXOSPHERE_CHROMIUM``.
Without one the browser tests skip, saying how to get it; ``EXOSPHERE_REQUIRE_BROWSER=1`` (CI) turns the skip
into a failure. Every page records console errors and uncaught exceptions; the context fails the test on any.
Screenshots go to ``tests/output/screenshots``.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.async_api import ConsoleMessage, Page, async_playwright

SCREENSHOTS = Path(__file__).resolve().parents[1] / "output" / "screenshots"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium() -> str:
    """The Chromium binary; skips the test (fails it under EXOSPHERE_REQUIRE_BROWSER=1) when there is none."""
    path = os.environ.get("EXOSPHERE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    message = (
        "no chromium for the browser tests: run `make browser` as root (apt-get install chromium) "
        "or set EXOSPHERE_CHROMIUM to a Chromium binary"
    )
    if os.environ.get("EXOSPHERE_REQUIRE_BROWSER") == "1":
        pytest.fail(message + " (EXOSPHERE_REQUIRE_BROWSER=1)")
    pytest.skip(message)


@dataclass
class Browser:
    page: Page
    # Console errors and uncaught exceptions seen so far; the ones matching `expected` are kept apart.
    errors: list[str] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)

    async def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        return path


@asynccontextmanager
async def browsing(base_url: str, *, expected_errors: str | None = None) -> AsyncIterator[Browser]:
    """A fresh browser page on ``base_url``. Console errors fail the test at the end, except those matching the
    ``expected_errors`` pattern (for example the 404s a test provokes on purpose)."""
    executable = chromium()
    allowed = re.compile(expected_errors) if expected_errors else None
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=executable, headless=True, args=FLAGS)
        try:
            context = await browser.new_context(
                base_url=base_url, viewport={"width": 1400, "height": 900}, ignore_https_errors=True
            )
            page = await context.new_page()
            page.set_default_timeout(10_000)
            seen = Browser(page)

            def on_console(message: ConsoleMessage) -> None:
                if message.type == "error":
                    text = f"{message.text} ({message.location.get('url', '')})"
                    (seen.expected if allowed and allowed.search(text) else seen.errors).append(text)

            page.on("console", on_console)
            page.on("pageerror", lambda exc: seen.errors.append(f"uncaught: {exc}"))
            yield seen
            assert not seen.errors, f"console errors: {seen.errors}"
        finally:
            await browser.close()
