"""Real-browser tests (#13): headless Chromium against a relay in the test's own trio run,
with the pages served from another origin than the relay's."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from tests.browser.helpers import Browser, PageServer, drop_consumers
from tests.conftest import StartRelay
from tests.helpers import RunningRelay

# Each test takes a few seconds at most (the EventSource ones wait out Chromium's 3 s
# reconnection delay twice): a tighter guard than the suite's 60 s.
pytestmark = [pytest.mark.browser, pytest.mark.timeout(30)]


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


# -- the triorelay.v1 client, against a scripted relay --

Script = Callable[[WebSocketConnection], Awaitable[None]]


def subscribed(epoch: str, offset: int, **fields: object) -> str:
    fields = {"recovering": False, "recovered": False, "reason": None, "replayed": 0} | fields
    return json.dumps(
        {"triorelay": "subscribed", "channel": "chat", "epoch": epoch, "offset": offset} | fields
    )


async def first_connection(ws: WebSocketConnection) -> None:
    await ws.send_message(subscribed("E1", 5))
    await ws.send_message("m chat 6\nhello")
    await ws.send_message(b"m chat 7\n\x00\x01\xff")
    await ws.send_message("x chat 8\na frame kind of a later version")
    await ws.send_message('{"triorelay":"later","channel":"chat"}')
    await ws.send_message('{"triorelay":"dropped","channel":"chat","count":2,"total":2}')
    await ws.send_message("m chat 8\nline one\nline two")
    await ws.aclose(1001, "restarting")


async def second_connection(ws: WebSocketConnection) -> None:
    await ws.send_message(subscribed("E1", 9, recovering=True, recovered=True, replayed=1))
    await ws.send_message("m chat 9\nreplayed")
    await ws.send_message(
        '{"triorelay":"gap","channel":"chat","count":null,"reason":"lost","epoch":"E2"}'
    )
    await ws.send_message("m chat 1\nnew history")
    await ws.aclose(1001, "restarting")


async def third_connection(ws: WebSocketConnection) -> None:
    await ws.send_message(subscribed("E2", 40, recovering=True, reason="trimmed"))
    await ws.send_message("m chat 41\nafter the trim")


async def test_framing_client_follows_the_framing(
    nursery: trio.Nursery, browser: Browser, pages: PageServer
) -> None:
    """docs/clients/triorelay.js reads messages (text, binary), control messages and positions,
    ignores kinds it does not know, and resumes from its position after each close."""
    scripts: list[Script] = [first_connection, second_connection, third_connection]
    targets: list[str] = []
    send_close, closes = trio.open_memory_channel[int | None](len(scripts))

    async def handler(request: WebSocketRequest) -> None:
        assert "triorelay.v1" in request.proposed_subprotocols
        targets.append(request.path)
        ws = await request.accept(subprotocol="triorelay.v1")
        await scripts[len(targets) - 1](ws)
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed as closed:
            await send_close.send(closed.reason.code if closed.reason else None)

    server = await nursery.start(partial(serve_websocket, handler, "127.0.0.1", 0, None))
    url = f"http://127.0.0.1:{server.port}"
    await browser.open(pages.url("/framing_client.html", relay=url, channel="chat"))
    await browser.wait_for("received.length === 6", fail_if="window.failed")
    assert await browser.run("return subscription.position;") == "E2:41"
    await browser.run("subscription.close();")
    await browser.wait_for("closes.length === 3")

    assert await browser.run("return received;") == [
        {"position": "E1:6", "data": "hello", "binary": False},
        {"position": "E1:7", "data": [0, 1, 255], "binary": True},
        {"position": "E1:8", "data": "line one\nline two", "binary": False},
        {"position": "E1:9", "data": "replayed", "binary": False},
        {"position": "E2:1", "data": "new history", "binary": False},
        {"position": "E2:41", "data": "after the trim", "binary": False},
    ]
    kinds = await browser.run("return controls.map((c) => c.triorelay);")
    assert kinds == ["subscribed", "dropped", "subscribed", "gap", "subscribed"]
    assert await browser.run("return closes;") == [
        {"code": 1001, "reason": "restarting"},
        {"code": 1001, "reason": "restarting"},
        {"code": 1000, "reason": ""},
    ]
    assert targets == [
        "/ws/consumer/chat",
        "/ws/consumer/chat?since=E1%3A8",
        "/ws/consumer/chat?since=E2%3A1",
    ]
    with trio.fail_after(5):  # as the scripted relay saw them
        assert [await closes.receive() for _ in scripts] == [1001, 1001, 1000]


# -- resuming after the relay drops the connection --


def message(number: int) -> str | bytes:
    """The test's message ``number``: text, but for one binary and one of two lines."""
    if number == 15:
        return b"\x00binary \xff 15"
    if number == 25:
        return f"message {number}\nits second line"
    return f"message {number}"


MESSAGES = [message(number) for number in range(1, 31)]


async def publish(relay: RunningRelay, channel: str, messages: list[str | bytes]) -> None:
    for payload in messages:
        text = isinstance(payload, str)
        response = await relay.http.post(
            f"/channels/{channel}/messages",
            content=payload.encode() if isinstance(payload, str) else payload,
            headers={"content-type": "text/plain" if text else "application/octet-stream"},
        )
        assert response.status_code == 202, response.text


async def publish_with_two_drops(
    relay: RunningRelay, browser: Browser, channel: str, subscriptions: str
) -> None:
    """Publish MESSAGES, dropping the page's connection server-side twice: right after the
    first ten (some still on their way), and right after the page resumed (its replay may still
    be under way). The second ten are published while the page is away.
    ``subscriptions``: the page's count of ``subscribed`` frames, in JavaScript."""
    await browser.wait_for(f"{subscriptions} === 1", fail_if="window.failed")
    await publish(relay, channel, MESSAGES[:10])
    assert drop_consumers(relay, channel) >= 1
    await publish(relay, channel, MESSAGES[10:20])
    await browser.wait_for(f"{subscriptions} === 2", fail_if="window.failed")
    assert drop_consumers(relay, channel) >= 1
    await publish(relay, channel, MESSAGES[20:])
    await browser.wait_for(f"{subscriptions} === 3", fail_if="window.failed")
    last = json.dumps(MESSAGES[-1])
    await browser.wait_for(f"received.length && received.at(-1).data === {last}")


async def test_event_source_resumes_after_server_side_drops(
    start_relay: StartRelay, browser: Browser, pages: PageServer
) -> None:
    """An EventSource page on another origin gets every message exactly once and in order,
    while the relay drops its stream twice (the browser resumes with Last-Event-ID)."""
    relay = await start_relay(allowed_origins=[pages.origin])
    await browser.open(pages.url("/event_source.html", relay=relay.http_url, channel="news"))
    await publish_with_two_drops(relay, browser, "news", "subscribed.length")

    subscriptions = await browser.run("return subscribed;")
    epoch = subscriptions[0]["epoch"]
    assert await browser.run("return received;") == [
        {"id": f"{epoch}:{offset}", "data": base64.b64encode(payload).decode(), "event": "binary"}
        if isinstance(payload, bytes)
        else {"id": f"{epoch}:{offset}", "data": payload, "event": "message"}
        for offset, payload in enumerate(MESSAGES, 1)
    ]
    assert [(s["epoch"], s["recovering"]) for s in subscriptions] == [
        (epoch, False),
        (epoch, True),
        (epoch, True),
    ]
    assert [s["recovered"] for s in subscriptions[1:]] == [True, True]


async def test_framing_client_resumes_after_server_side_drops(
    start_relay: StartRelay, browser: Browser, pages: PageServer
) -> None:
    """A page on another origin using docs/clients/triorelay.js gets every message exactly
    once and in order, while the relay closes its WebSocket twice (it resumes with ?since=)."""
    relay = await start_relay(allowed_origins=[pages.origin])
    await browser.open(pages.url("/framing_client.html", relay=relay.ws_url, channel="news"))
    await publish_with_two_drops(
        relay, browser, "news", "controls.filter((c) => c.triorelay === 'subscribed').length"
    )

    controls = await browser.run("return controls;")
    epoch = controls[0]["epoch"]
    assert await browser.run("return received;") == [
        {"position": f"{epoch}:{offset}", "data": list(payload), "binary": True}
        if isinstance(payload, bytes)
        else {"position": f"{epoch}:{offset}", "data": payload, "binary": False}
        for offset, payload in enumerate(MESSAGES, 1)
    ]
    assert [(c["triorelay"], c["epoch"], c["recovering"]) for c in controls] == [
        ("subscribed", epoch, False),
        ("subscribed", epoch, True),
        ("subscribed", epoch, True),
    ]
    assert [c["recovered"] for c in controls[1:]] == [True, True]
    assert [close["code"] for close in await browser.run("return closes;")] == [1001, 1001]
