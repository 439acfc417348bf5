"""The ``triorelay`` command line: settings errors are reported, not raised; ``sub`` and
``pub`` against a relay."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys

import pytest
import trio

from tests.helpers import RunningRelay, receive_n
from triorelay.cli import main
from triorelay.client import publish


def test_bad_setting_exits_2_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad TRIORELAY_* value exits 2 with a message naming the setting."""
    monkeypatch.setenv("TRIORELAY_CONSUMER_BUFFER_MESSAGES", "-1")
    assert main(["serve", "--port", "0"]) == 2
    assert "TRIORELAY_CONSUMER_BUFFER_MESSAGES" in capsys.readouterr().err


def test_missing_config_file_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """--config with a file that does not exist exits 2 and says which file."""
    assert main(["serve", "--config", "/nonexistent/triorelay.toml"]) == 2
    assert "/nonexistent/triorelay.toml" in capsys.readouterr().err


def test_several_workers_need_a_shared_broker(capsys: pytest.CaptureFixture[str]) -> None:
    """--workers 2 with the memory broker is refused: channels would split between workers."""
    assert main(["serve", "--port", "0", "--workers", "2"]) == 2
    assert "memory broker" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the version."""
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert "triorelay 0.1.0" in capsys.readouterr().out


# -- triorelay pub / sub, against a relay in the test's own trio run --


def feed_stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    """Make ``data`` the process's stdin for the test (``main`` runs in a thread)."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


async def test_pub_publishes_each_line_of_stdin(
    relay: RunningRelay, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each line (without its ending, CRLF too; empty lines included) is a text message, in
    order; --json prints each offset; exit 0 at end of input."""
    feed_stdin(monkeypatch, b"one\ntwo\r\n\nl\xc3\xa4st")
    argv = ["pub", "lines", "--url", relay.ws_url, "--json"]
    with trio.fail_after(10):
        async with relay.websocket("/ws/consumer/lines") as consumer:
            assert await trio.to_thread.run_sync(main, argv) == 0
            assert await receive_n(consumer, 4) == ["one", "two", "", "läst"]
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [
        {"channel": "lines", "offset": offset} for offset in (1, 2, 3, 4)
    ]


async def test_pub_prints_nothing_without_json(
    relay: RunningRelay, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --json, pub is silent."""
    feed_stdin(monkeypatch, b"a\nb\n")
    argv = ["pub", "quiet", "--url", relay.http_url]
    with trio.fail_after(10):
        assert await trio.to_thread.run_sync(main, argv) == 0
    assert capsys.readouterr().out == ""


async def test_pub_refused_exits_1_saying_why(
    relay: RunningRelay, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refusal (here a bad channel name, 400) exits 1 with the relay's reason."""
    feed_stdin(monkeypatch, b"a\n")
    argv = ["pub", "bad name", "--url", relay.ws_url]
    with trio.fail_after(10):
        assert await trio.to_thread.run_sync(main, argv) == 1
    assert "400" in capsys.readouterr().err


async def test_sub_that_cannot_recover_exits_1(
    relay: RunningRelay, capsys: pytest.CaptureFixture[str]
) -> None:
    """--recover required with a position from another epoch: exit 1, the reason said."""
    await publish(relay.ws_url, "strict", ["x"])
    argv = ["sub", "strict", "--url", relay.ws_url, "--since", "other:1", "--recover", "required"]
    with trio.fail_after(10):
        assert await trio.to_thread.run_sync(main, argv) == 1
    assert "recovery failed: epoch" in capsys.readouterr().err


def test_sub_with_a_bad_position_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed --since is a usage error."""
    with pytest.raises(SystemExit) as exited:
        main(["sub", "chat", "--since", "nope"])
    assert exited.value.code == 2
    assert "epoch:offset" in capsys.readouterr().err


def test_a_missing_token_file_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    """--token-file is read at once: a missing file is reported before connecting."""
    assert main(["sub", "chat", "--token-file", "/nonexistent/token"]) == 1
    assert "/nonexistent/token" in capsys.readouterr().err


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "plain"])
async def test_sub_prints_each_message_until_ctrl_c(relay: RunningRelay, as_json: bool) -> None:
    """``triorelay sub`` in a process of its own: one line per message (--json: an object
    with channel, position and payload, binary in base64, and notices; plain: the payload as
    it is, notices on stderr); SIGINT ends it with 130."""
    argv = [sys.executable, "-m", "triorelay", "sub", "live", "--url", relay.ws_url]
    process = await trio.lowlevel.open_process(
        [*argv, *(["--json"] if as_json else [])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    try:
        with trio.fail_after(20):
            # Subscribed: JSON on stdout, a line on stderr. Publish only once it is.
            ready = process.stdout if as_json else process.stderr
            first = await _line(ready)
            assert b"subscribed" in first
            offsets = await publish(relay.ws_url, "live", ["hello", b"\x00\x01", "bye"])
            lines = [await _line(process.stdout) for _ in range(3)]
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 130
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if as_json:
        epoch = json.loads(first)["position"].split(":")[0]
        assert [json.loads(line) for line in lines] == [
            {"channel": "live", "position": f"{epoch}:{offsets[0]}", "payload": "hello",
             "binary": False},
            {"channel": "live", "position": f"{epoch}:{offsets[1]}", "payload": "AAE=",
             "binary": True},
            {"channel": "live", "position": f"{epoch}:{offsets[2]}", "payload": "bye",
             "binary": False},
        ]  # fmt: skip
    else:
        assert lines == [b"hello\n", b"\x00\x01\n", b"bye\n"]


async def _line(stream: trio.abc.ReceiveStream) -> bytes:
    """One line from ``stream``, read a byte at a time (nothing past it is taken)."""
    line = b""
    while not line.endswith(b"\n"):
        byte = await stream.receive_some(1)
        assert byte, f"the stream ended: {line!r}"
        line += byte
    return line
