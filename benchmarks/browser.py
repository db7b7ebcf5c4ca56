"""Headless Chromium for the playground: where it is, how to start it here, and a screenshot
of the page in use (the README's)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
# Headless as root, and nothing that reaches for the network (a closed network refuses it, slowly).
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def chromium_path() -> str | None:
    """Debian's chromium (``apt-get install chromium``) or another Chromium on the PATH."""
    return next((p for p in CHROMIUM if Path(p).is_file()), None) or shutil.which("chromium")


@contextlib.contextmanager
def opened(url: str, width: int = 1280, height: int = 760) -> Iterator[Any]:
    """A Playwright page of headless Chromium at ``url``, loaded and ready; closed at the end."""
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    if path is None:
        raise RuntimeError("no Chromium: apt-get install chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']", timeout=60_000)
            yield page
        finally:
            browser.close()


def generated(page: Any, timeout_ms: int = 60_000) -> None:
    """Press Generate and wait until the page says the generation is done."""
    page.evaluate("delete document.querySelector('#gen-status').dataset.done")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#gen-status').dataset.done === '1'", timeout=timeout_ms)


def screenshot(url: str, out: Path, prompt: str = "ROMEO:\n", hover: int = 40) -> Path:
    """A picture of the page: a sample streamed from ``prompt`` at the page's defaults (seed 1),
    the token ``hover`` pinned so its top-5 tables show."""
    with opened(url) as page:
        page.fill("#prompt", prompt)
        page.fill("#length", "400")
        page.fill("#seed", "1")
        generated(page)
        page.locator(".sample span[data-i]").nth(hover).click()
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
    return out
