"""A real headless Chromium for tests (Debian's /usr/bin/chromium + /usr/bin/chromedriver,
driven by Selenium), and a small static site on 127.0.0.1 to load pages from.

    from tests.browser import browser, Site   # `browser` is a pytest fixture

    def test_page(browser, tmp_path):
        with Site({"/": "<p>hi</p>"}) as site:
            browser.get(site.url + "/")

    with launch(javascript=False, phone=(390, 844)) as driver:  # other settings, or several
        driver.get(url)
        screenshot(driver, tmp_path / "page.png")               # the whole page, not the window

The driver path is given explicitly, so Selenium Manager never downloads
anything; every run gets a fresh profile. Without Chromium the tests that use
the fixture are skipped with a reason that says how to install it (.ci/run does).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1100,800",
)
MISSING = (
    "chromium / chromedriver not installed: `apt-get install -y chromium chromium-driver` "
    "(.ci/run installs them); browser tests SKIPPED"
)


def available() -> bool:
    return os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)


@pytest.fixture
def browser() -> Iterator[Any]:
    with launch() as driver:
        yield driver


@contextlib.contextmanager
def launch(*, javascript: bool = True, phone: tuple[int, int] | None = None,
           window: str = "1100,800") -> Iterator[Any]:
    """A fresh headless Chromium (skips the test without one). `javascript=False` turns
    scripts off as a user's setting does; `phone=(width, height)` emulates a phone's
    screen in CSS pixels (device pixel ratio 2, a mobile user agent)."""
    if not available():
        pytest.skip(MISSING)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never reach the network
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="relay-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        if not flag.startswith("--window-size"):
            options.add_argument(flag)
    options.add_argument(f"--window-size={window}")
    options.add_argument(f"--user-data-dir={profile}")
    if not javascript:
        options.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2}
        )
    if phone is not None:
        options.add_experimental_option("mobileEmulation", {
            "deviceMetrics": {"width": phone[0], "height": phone[1], "pixelRatio": 2.0},
            "userAgent": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36"
                         " (KHTML, like Gecko) Chrome/150.0 Mobile Safari/537.36",
        })
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(driver: Any, path: str | os.PathLike[str]) -> None:
    """The whole page, not only the window, as a PNG (Chrome DevTools; works without
    JavaScript too, since it does not run in the page)."""
    import base64

    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png",
        "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
    })
    with open(path, "wb") as out:
        out.write(base64.b64decode(shot["data"]))


class Site:
    """Serve fixed pages on 127.0.0.1 (path → HTML), like a merchant's site."""

    def __init__(self, pages: dict[str, str]) -> None:
        self.pages = pages
        self.requests: list[str] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                site.requests.append(self.path)
                page = site.pages.get(self.path.split("?", 1)[0])
                if page is None:
                    self.send_error(404)
                    return
                body = page.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Site:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
