"""The console's browser tests: Debian's chromium (never a browser Playwright downloads) driven by
Playwright for Python, one browser for the session, one service per test module served on a
real port, and a screenshot per test under build/console-screenshots/ (printed at the end)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "console-screenshots"
# Waits are on conditions, with a deadline far above what a loaded 2-core machine needs.
TIMEOUT_MS = 20_000
_saved: list[Path] = []


def chromium_path() -> str | None:
    configured = os.environ.get("CONSOLE_CHROMIUM")
    if configured:
        return configured
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def browser():
    path = chromium_path()
    if path is None:
        pytest.fail("no chromium for the console's browser tests: `make test` installs Debian's package (apt-get install chromium)", pytrace=False)
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where chromium refuses its sandbox.
        launched = playwright.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    """A fresh browser context (no cookies) and page at desktop width."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    opened = context.new_page()
    yield opened
    context.close()


@pytest.fixture
def shot(request):
    """shot(page, name=None): a full-page screenshot under build/console-screenshots/."""

    def take(page, name: str | None = None) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name or request.node.name}.png"
        page.screenshot(path=str(path), full_page=True)
        _saved.append(path)
        return path

    return take


def pytest_terminal_summary(terminalreporter):
    if _saved:
        terminalreporter.write_sep("-", f"console screenshots ({len(_saved)}): {SCREENSHOTS}")
