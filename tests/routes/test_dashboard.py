"""``GET /dashboard``, its files and its feed, over plain HTTP (the page itself: tests/browser)."""

from __future__ import annotations

import json
import logging

import pytest
import trio

from tests.auth.keys import SECRET, token
from tests.conftest import StartRelay
from tests.helpers import RunningRelay, wait_until
from tests.routes.test_events import open_events
from triorelay.routes.dashboard import FILES

pytestmark = pytest.mark.timeout(30)

ADMIN = token(sub="ops", grant={"rights": ["admin"]})
PUBLISHER = token(sub="app", grant={"channels": {"*": ["publish", "subscribe"]}})
KEYS = {"time", "status", "broker", "tasks", "connections", "channels_live", "totals", "p99"}


@pytest.fixture
async def secured(start_relay: StartRelay) -> RunningRelay:
    """A relay with tokens on, a snapshot every 0.1 s, at most 2 channels in one."""
    return await start_relay(
        auth_hmac_secret=SECRET, dashboard_interval_seconds=0.1, dashboard_max_channels=2
    )


async def test_the_feed_streams_snapshots_of_the_busiest_channels(secured: RunningRelay) -> None:
    """The first event is a snapshot with every part; of 3 channels the 2 busiest, busiest
    first; the dashboard's own connection counts under its role; then a snapshot a tick."""
    hub = secured.relay.hub
    with hub.attach_producer("a"), hub.attach_producer("b"), hub.attach_producer("c"):
        for channel, count in (("a", 1), ("b", 3), ("c", 2)):
            for _ in range(count):
                answer = await secured.http.post(
                    f"/channels/{channel}/messages",
                    content=b"m",
                    headers={"authorization": f"Bearer {PUBLISHER}"},
                )
                assert answer.status_code == 202
        async with open_events(secured, f"/dashboard/feed?token={ADMIN}") as stream:
            assert stream.status == 200
            assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
            assert "default-src 'self'" in stream.headers["content-security-policy"]
            first = await stream.next()
            second = await stream.next()
    assert (first["event"], first["retry"]) == ("snapshot", "500")
    snapshot = json.loads(first["data"])
    assert set(snapshot) == KEYS | {"channels"}
    assert [c["name"] for c in snapshot["channels"]] == ["b", "c"]
    assert snapshot["channels"][0]["messages_in"] == 3
    assert (snapshot["channels_live"], snapshot["totals"]["messages_in"]) == (3, 6)
    assert snapshot["connections"] == {"dashboard": 1}  # the hub's producers have no route
    assert (snapshot["status"], snapshot["broker"]["kind"]) == ("ok", "memory")
    later = json.loads(second["data"])
    assert later["time"] > snapshot["time"]
    assert later["totals"]["rate_in"] == 0.0
    assert second["event"] == "snapshot"
    assert "retry" not in second


async def test_the_page_and_its_files_need_the_admin_right(secured: RunningRelay) -> None:
    """Without a token 401, with a token without admin 403, for the page, each file and the
    feed; a POST is 405."""
    paths = ["/dashboard", "/dashboard/feed", *(f"/dashboard/{name}" for name in FILES)]
    for path in paths:
        anonymous = await secured.http.get(path)
        assert anonymous.status_code == 401, path
        assert "admin" in anonymous.json()["error"]
        assert (await secured.http.get(f"{path}?token={PUBLISHER}")).status_code == 403, path
    assert (await secured.http.post(f"/dashboard?token={ADMIN}")).status_code == 405
    refused = secured.relay.counters.refused
    assert (refused[(401, "no_token")], refused[(403, "no_right")]) == (len(paths), len(paths))


async def test_the_page_hands_its_token_to_its_files_and_feed(
    secured: RunningRelay, caplog: pytest.LogCaptureFixture
) -> None:
    """The page links its own files and its feed with the token it came with, has no inline
    script and a Content-Security-Policy of 'self'; each file has its type; nothing logs
    the token."""
    caplog.set_level(logging.INFO)
    page = await secured.http.get(f"/dashboard?token={ADMIN}")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.text.count(f"?token={ADMIN}") == len(FILES) + 1  # each file, and the feed
    assert "<script>" not in page.text
    assert "style=" not in page.text
    for name, content_type in FILES.items():
        served = await secured.http.get(f"/dashboard/{name}", params={"token": ADMIN})
        assert served.status_code == 200
        assert served.headers["content-type"] == content_type.decode()
    assert (await secured.http.get(f"/dashboard/nothing.js?token={ADMIN}")).status_code == 404
    header = await secured.http.get("/dashboard", headers={"authorization": f"Bearer {ADMIN}"})
    assert "{{query}}" not in header.text
    assert 'data-feed="dashboard/feed"' in header.text  # no token in the URL, none passed on
    async with open_events(secured, f"/dashboard/feed?token={ADMIN}") as stream:
        await stream.next()

    def relay_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name.startswith("triorelay")]

    await wait_until(lambda: any("role=dashboard" in line for line in relay_lines()))
    assert not [line for line in relay_lines() if ADMIN in line]


async def test_the_feed_ends_when_the_relay_shuts_down(secured: RunningRelay) -> None:
    """Shutdown ends the feed's response (the browser's EventSource then retries)."""
    async with open_events(secured, f"/dashboard/feed?token={ADMIN}") as stream:
        await stream.next()
        secured.relay.shutdown.begin("the test")
        await stream.body()
        assert stream.ended
    counters = secured.relay.counters
    await wait_until(lambda: counters.ended[("dashboard", "1001")] == 1)


async def test_the_feed_ends_when_its_token_expires(start_relay: StartRelay) -> None:
    """As an event stream: at the admin token's expiry (here within 2 s) the feed ends (the
    page's next attempt needs a valid token); it went on for good before."""
    relay = await start_relay(
        auth_hmac_secret=SECRET, dashboard_interval_seconds=0.1, auth_leeway_seconds=0
    )
    short = token(sub="ops", grant={"rights": ["admin"]}, ttl=2)
    async with open_events(relay, f"/dashboard/feed?token={short}") as stream:
        await stream.next()
        with trio.fail_after(5):
            await stream.body()
        assert stream.ended
