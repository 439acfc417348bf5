"""Browser test helpers: a Chromium page driven from a trio test, a server of test pages on
another origin than the relay's, and dropping a channel's consumers from the relay's side.

The relay under test runs in the test's own trio run (``start_relay``), so nothing here may
block that run: every WebDriver call goes to a worker thread (:class:`Browser`), and the page
server answers from threads of its own (:class:`PageServer`).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

import trio
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

from tests.helpers import RunningRelay
from triorelay.errors import CloseCode

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Debian's packages (`make test` installs them): never a browser or driver of selenium's.
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

ROOT = Path(__file__).resolve().parents[2]
PAGES = Path(__file__).resolve().parent / "pages"
CLIENTS = ROOT / "docs" / "clients"
#: Screenshots, one per test, named after it.
OUTPUT = ROOT / "build" / "test-output"

WAIT_POLL_SECONDS = 0.02


def start_chromium() -> WebDriver:
    """A headless Chromium, driven by Debian's chromedriver. Blocking (about a second).

    ``--no-sandbox``: the tests run as root, where Chromium's sandbox refuses to start;
    ``--disable-dev-shm-usage``: a container's small /dev/shm would crash its renderers.
    """
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=800,600",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the pages' console
    # An explicit driver path: selenium-manager (which would go to the network) never runs.
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(10)
    driver.set_script_timeout(10)
    return driver


class PageFailed(AssertionError):
    """The page said it failed (the ``fail_if`` expression of :meth:`Browser.wait_for`)."""


class Browser:
    """One Chromium tab, driven from a trio test.

    Every call runs the blocking WebDriver call in a worker thread, one at a time, so that the
    relay and the page server keep answering the page meanwhile. Scripts are WebDriver's
    ``execute_script`` bodies: ``return`` what you want back.
    """

    def __init__(self, driver: WebDriver) -> None:
        self.driver = driver
        self._lock = trio.Lock()

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        async with self._lock:
            return await trio.to_thread.run_sync(partial(function, *args))

    async def open(self, url: str) -> None:
        """Load ``url`` and wait for its ``load`` event."""
        await self._call(self.driver.get, url)

    async def run(self, script: str, *args: Any) -> Any:
        """Run ``script`` in the page (``arguments[i]`` are ``args``) and return its result."""
        return await self._call(self.driver.execute_script, script, *args)

    async def wait_for(
        self, expression: str, *, timeout_seconds: float = 10, fail_if: str | None = None
    ) -> Any:
        """Poll the page until the JavaScript ``expression`` is truthy; return its value.

        ``fail_if``: an expression the page makes truthy (a message) when what is awaited can
        no longer come: :class:`PageFailed` at once (unless ``expression`` is true too),
        rather than a timeout. After
        ``timeout_seconds`` an AssertionError shows ``window.log`` and the page's console.
        """
        script = f"return [({expression}), ({fail_if or 'null'})];"

        def condition(driver: WebDriver) -> Any:
            value, failed = driver.execute_script(script)
            if failed and not value:
                raise PageFailed(f"the page failed: {failed}\n{self._diagnostics()}")
            return value

        def wait() -> Any:
            try:
                return WebDriverWait(self.driver, timeout_seconds, WAIT_POLL_SECONDS).until(
                    condition
                )
            except TimeoutException:
                raise AssertionError(
                    f"{expression!r} still false after {timeout_seconds} s\n{self._diagnostics()}"
                ) from None

        return await self._call(wait)

    def _diagnostics(self) -> str:
        """The page's ``window.log`` (if it keeps one) and console, for a failure message."""
        log = self.driver.execute_script("return window.log === undefined ? null : window.log;")
        console = [entry["message"] for entry in self.driver.get_log("browser")]
        return f"window.log: {json.dumps(log)}\nconsole: {json.dumps(console, indent=1)}"

    async def console(self) -> list[str]:
        """What the page logged to its console since the last call (errors included)."""
        entries = await self._call(self.driver.get_log, "browser")
        return [entry["message"] for entry in entries]

    async def screenshot(self, name: str) -> Path:
        """Save what the page shows as ``build/test-output/<name>.png``; return the path."""
        path = OUTPUT / (re.sub(r"[^\w.-]+", "_", name) + ".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        png = await self._call(self.driver.get_screenshot_as_png)
        path.write_bytes(png)
        return path

    async def resize(self, width: int, height: int) -> None:
        """Set the window's size (the module's Chromium starts at 800 x 600)."""
        await self._call(self.driver.set_window_size, width, height)

    async def leave(self) -> None:
        """Go to a blank page: the page's connections close, and its console is emptied."""
        await self._call(self.driver.get, "about:blank")
        await self._call(self.driver.get_log, "browser")


class PageServer:
    """Test pages served from an origin of their own (``http://127.0.0.1:<port>``).

    ``/<name>`` is ``tests/browser/pages/<name>``, ``/clients/<name>`` is
    ``docs/clients/<name>``, and :meth:`add` serves a page a test writes. Its threads answer
    while the trio run is busy; :meth:`close` stops them.
    """

    def __init__(self) -> None:
        self._added: dict[str, tuple[str, bytes]] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_PageHandler, self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def origin(self) -> str:
        host, port = self._server.server_address[:2]
        assert isinstance(host, str)
        return f"http://{host}:{port}"

    def url(self, path: str, **query: str) -> str:
        """The URL of ``path`` on this server, with ``query`` as its query string."""
        return self.origin + path + ("?" + urlencode(query) if query else "")

    def add(self, path: str, body: str, content_type: str = "text/html; charset=utf-8") -> str:
        """Serve ``body`` at ``path``; return its URL."""
        self._added[path] = (content_type, body.encode())
        return self.url(path)

    def find(self, path: str) -> tuple[str, bytes] | None:
        """What ``path`` serves: (content type, body), or None."""
        if path in self._added:
            return self._added[path]
        directory, name = (CLIENTS, path[9:]) if path.startswith("/clients/") else (PAGES, path[1:])
        file = directory / name
        if "/" in name or not name or not file.is_file():
            return None
        types = {".html": "text/html", ".js": "text/javascript"}
        return types.get(
            file.suffix, "application/octet-stream"
        ) + "; charset=utf-8", file.read_bytes()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


class _PageHandler(BaseHTTPRequestHandler):
    def __init__(self, pages: PageServer, *args: Any) -> None:
        self.pages = pages
        super().__init__(*args)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/favicon.ico":  # asked for by every page: none, without a 404 in the console
            self.send_response(HTTPStatus.NO_CONTENT)
            self.end_headers()
            return
        found = self.pages.find(path)
        status, (content_type, body) = (
            (HTTPStatus.OK, found)
            if found is not None
            else (HTTPStatus.NOT_FOUND, ("text/plain", b"not found"))
        )
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        message = format % args  # http.server's own format, to the log rather than stderr
        logger.debug("page server: %s", message)


@contextmanager
def page_server() -> Iterator[PageServer]:
    server = PageServer()
    try:
        yield server
    finally:
        server.close()


def drop_consumers(relay: RunningRelay, channel: str) -> int:
    """Close every consumer of ``channel`` from the relay's side, as an eviction or a restart
    would (1001 on WebSocket; an event stream just ends); return how many there were."""
    consumers = relay.relay.hub.consumers_of(channel)
    for consumer in consumers:
        consumer.close(CloseCode.GOING_AWAY, "dropped by the test")
    return len(consumers)
