"""``triorelay.app:app``: importing builds nothing; the relay is built, or refused, at startup."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import trio

from tests.processes import LAUNCHERS
from triorelay.app import DeferredApp, relay_of

BAD_SETTING = {"TRIORELAY_CONSUMER_BUFFER_MESSAGES": "0"}


def test_importing_the_app_builds_nothing_even_with_bad_settings() -> None:
    """``import triorelay.app`` with a bad setting succeeds and starts no relay or broker."""
    code = "import triorelay.app as m; assert m.app._app is None; print('imported')"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, **BAD_SETTING),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "imported"
    assert result.stderr == ""


async def test_a_bad_setting_fails_the_lifespan_startup_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under a server other than the hypercorn CLI, startup fails through the lifespan."""
    monkeypatch.setenv("TRIORELAY_CONSUMER_BUFFER_MESSAGES", "0")
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(dict(message))

    with trio.fail_after(10):
        await DeferredApp()({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert "TRIORELAY_CONSUMER_BUFFER_MESSAGES" in sent[0]["message"]


async def test_the_app_is_built_at_startup_and_serves() -> None:
    """The lifespan startup builds the relay app, which then answers requests."""
    app = DeferredApp()
    to_app: trio.MemorySendChannel[dict[str, Any]]
    to_app, app_receive = trio.open_memory_channel[dict[str, Any]](4)
    from_app, replies = trio.open_memory_channel[dict[str, Any]](4)

    async def send(message: dict[str, Any]) -> None:
        await from_app.send(dict(message))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
            nursery.start_soon(app, scope, app_receive.receive, send)
            await to_app.send({"type": "lifespan.startup"})
            assert (await replies.receive())["type"] == "lifespan.startup.complete"
            assert app._app is not None
            assert relay_of(app._app).hub is not None
            await to_app.send({"type": "lifespan.shutdown"})
            assert (await replies.receive())["type"] == "lifespan.shutdown.complete"


def test_hypercorn_reports_a_bad_setting_in_one_line_without_a_traceback() -> None:
    """``hypercorn ... triorelay.app:app`` with a bad setting stops with the reason alone."""
    result = subprocess.run(
        LAUNCHERS["hypercorn"],
        env=dict(os.environ, **BAD_SETTING),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "triorelay: invalid settings" in result.stderr
    assert "TRIORELAY_CONSUMER_BUFFER_MESSAGES" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Running on" not in result.stderr
