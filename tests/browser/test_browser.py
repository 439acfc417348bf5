"""Real-browser tests (#13): headless Chromium against a relay in the test's own trio run,
with the pages served from another origin than the relay's."""

from __future__ import annotations

import secrets

import pytest

from tests.browser.helpers import Browser, PageServer
from tests.conftest import StartRelay

pytestmark = pytest.mark.browser


CANARY = """<!doctype html>
<meta charset="utf-8">
<title>canary</title>
<h1 id="out">JavaScript did not run</h1>
<script>
  // Only JavaScript can write these: the reversed nonce now, the fetched one after a round
  // trip to the page server.
  const nonce = new URLSearchParams(location.search).get("nonce");
  window.reversed = [...nonce].reverse().join("");
  document.getElementById("out").textContent = `JavaScript ran: ${window.reversed}`;
  fetch("/canary.json").then((r) => r.json()).then((body) => { window.fetched = body.n * 2; });
</script>
"""


async def test_a_page_runs_javascript(browser: Browser, pages: PageServer) -> None:
    """A served page's script runs, its results are read back, and a screenshot is saved."""
    nonce = secrets.token_hex(8)
    pages.add("/canary.html", CANARY)
    pages.add("/canary.json", '{"n": 21}', "application/json")
    await browser.open(pages.url("/canary.html", nonce=nonce))
    assert await browser.run("return window.reversed;") == nonce[::-1]
    assert await browser.wait_for("window.fetched") == 42
    assert await browser.run("return document.getElementById('out').textContent;") == (
        f"JavaScript ran: {nonce[::-1]}"
    )
    path = await browser.screenshot("test_a_page_runs_javascript")
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


ECHO = """<!doctype html>
<meta charset="utf-8">
<title>echo</title>
<h1 id="out">connecting</h1>
<script>
  // ?relay=<the relay's ws URL>: one message to /ws/echo, its echo in window.echoed.
  Object.assign(window, { echoed: null, ended: null, log: [] });
  const show = (text) => { document.getElementById("out").textContent = text; log.push(text); };
  const ws = new WebSocket(`${new URLSearchParams(location.search).get("relay")}/ws/echo`);
  ws.onopen = () => ws.send("ping from the page");
  ws.onmessage = (event) => { echoed = event.data; show(`echoed: ${echoed}`); ws.close(1000); };
  ws.onclose = (event) => { ended = { code: event.code }; show(`closed ${event.code}`); };
</script>
"""


async def test_a_page_of_an_allowed_origin_uses_the_relay(
    start_relay: StartRelay, browser: Browser, pages: PageServer
) -> None:
    """A page of an origin in allowed_origins reaches the relay (served in the same trio run)."""
    relay = await start_relay(allowed_origins=[pages.origin])
    await browser.open(pages.add("/echo.html", ECHO) + f"?relay={relay.ws_url}")
    assert await browser.wait_for("window.echoed", fail_if="window.ended") == "ping from the page"
    assert await browser.wait_for("window.ended") == {"code": 1000}


async def test_a_page_of_another_origin_is_refused(
    start_relay: StartRelay, browser: Browser, pages: PageServer
) -> None:
    """A page of an origin the relay does not allow cannot open a WebSocket to it (403)."""
    relay = await start_relay()
    await browser.open(pages.add("/echo.html", ECHO) + f"?relay={relay.ws_url}")
    assert await browser.wait_for("window.ended") == {"code": 1006}
    assert await browser.run("return window.echoed;") is None
    console = await browser.console()
    assert any("Unexpected response code: 403" in entry for entry in console), console
