"""The dashboard in a real headless Chromium (#14): a channel appears on the page and its
counters rise while a producer publishes, over the relay's own feed, with tokens on."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.auth.keys import SECRET, token
from tests.browser.helpers import ROOT, Browser
from tests.conftest import StartRelay
from triorelay.tracing import STAGES

pytestmark = [pytest.mark.browser, pytest.mark.timeout(30)]

#: The screenshot the docs show (docs/how-to/monitor-with-prometheus.md), made by this test.
DOCS_IMAGE = ROOT / "docs" / "images" / "dashboard.png"

ADMIN = token(sub="ops", grant={"rights": ["admin"]})
APP = token(sub="app", grant={"channels": {"news": ["publish", "subscribe"]}})


def cell(channel: str, field: str) -> str:
    """JavaScript: the text of ``field`` in ``channel``'s row of the table ('' if none)."""
    return (
        f'(document.querySelector(\'tr[data-channel="{channel}"] [data-field="{field}"]\')'
        "?.textContent ?? '')"
    )


def count(expression: str) -> str:
    """JavaScript: the number a cell shows (``1,234`` → 1234)."""
    return f"Number({expression}.replace(/,/g, ''))"


async def test_the_dashboard_shows_a_channel_and_its_messages_live(
    start_relay: StartRelay, browser: Browser
) -> None:
    """/dashboard?token=<admin>: the page's feed shows the channel once a producer attaches,
    its in and out counters follow each burst published, its p99 by stage and the plots
    fill in, connections by role and the broker show; no console error (the CSP holds)."""
    relay = await start_relay(
        auth_hmac_secret=SECRET, dashboard_interval_seconds=0.25, latency_sample_messages=1
    )
    await browser.resize(1280, 850)
    try:
        await browser.open(f"{relay.http_url}/dashboard?token={ADMIN}")
        await browser.wait_for("window.dashboard?.last", fail_if="dashboard.feed === 'closed'")
        assert await browser.run(f"return {cell('news', 'name')};") == ""
        async with (
            relay.websocket(f"/ws/consumer/news?token={APP}") as consumer,
            relay.websocket(f"/ws/producer/news?ack=id&token={APP}") as producer,
        ):
            await browser.wait_for(f"{cell('news', 'name')} === 'news'")
            sent = 0
            for burst in range(12):
                size = (5, 20, 10)[burst % 3]
                for _ in range(size):
                    await producer.send_message(f"message {sent}")
                    await producer.get_message()
                    sent += 1
                for _ in range(size):
                    await consumer.get_message()
                await browser.wait_for(
                    f"{count(cell('news', 'messages_in'))} === {sent}"
                    f" && {count(cell('news', 'messages_out'))} === {sent}"
                )
            # Every message is traced (latency_sample_messages=1): a p99 for each stage.
            await browser.wait_for(
                " && ".join(f"/^[0-9.]+$/.test({cell('news', f'p99_{stage}')})" for stage in STAGES)
            )
            assert await browser.run(
                "return ['producer', 'consumer', 'dashboard'].map((role) => "
                "document.querySelector(`#connections [data-field=${role}]`).textContent);"
            ) == ["1", "1", "1"]
            assert await browser.run(
                "return [document.getElementById('status').textContent, document.querySelector("
                "'#broker [data-field=kind]').textContent, dashboard.history.length >= 12,"
                " document.querySelectorAll('canvas').length];"
            ) == ["ok", "memory", True, 2]
            assert await browser.console() == []
            shot = await browser.screenshot("dashboard")  # under build/test-output/
            if os.environ.get("TRIORELAY_UPDATE_DOCS_IMAGES") == "1":
                shutil.copyfile(shot, DOCS_IMAGE)  # the docs' picture, when asked for
    finally:
        await browser.resize(800, 600)


async def test_the_dashboard_is_refused_without_the_admin_right(
    start_relay: StartRelay, browser: Browser
) -> None:
    """In a browser too: no token is 401, a token without ``admin`` 403, each with its reason."""
    relay = await start_relay(auth_hmac_secret=SECRET)
    await browser.open(f"{relay.http_url}/dashboard")
    assert "a token is needed" in await browser.run("return document.body.textContent;")
    await browser.open(f"{relay.http_url}/dashboard?token={APP}")
    assert "not allowed" in await browser.run("return document.body.textContent;")
    refused = relay.relay.counters.refused
    assert (refused[(401, "no_token")], refused[(403, "no_right")]) == (1, 1)
