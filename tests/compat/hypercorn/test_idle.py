"""IdleTimer: Hypercorn's keep-alive timer as a deadline on the read loop's cancel scope, not a
task: a new connection without a request and an HTTP keep-alive connection idle after its
response are closed at ``keep_alive_timeout``; an accepted WebSocket never is."""

from __future__ import annotations

import pytest
import trio
from hypercorn.config import Config

from tests.conftest import StartRelay
from tests.helpers import _UPGRADE, RunningRelay, client_frame
from triorelay import server as server_module
from triorelay.compat.hypercorn.reads import IdleTimer
from triorelay.settings import Settings

KEEP_ALIVE_SECONDS = 0.3


@pytest.fixture
def short_keep_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    """Relays started in the test close idle connections after KEEP_ALIVE_SECONDS."""
    original = server_module.hypercorn_config

    def config(settings: Settings) -> Config:
        made = original(settings)
        made.keep_alive_timeout = KEEP_ALIVE_SECONDS
        return made

    monkeypatch.setattr(server_module, "hypercorn_config", config)


async def connect(relay: RunningRelay) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", relay.port)


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := await stream.receive_some(65536):
        received += chunk
    return received


async def read_response(stream: trio.SocketStream) -> bytes:
    """One whole HTTP response with a content-length: its head and body."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += await stream.receive_some(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += await stream.receive_some(65536)
    return head + b"\r\n\r\n" + body


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET /healthz HTTP/1.1\r\n"],
    ids=["nothing", "part of a request"],
)
@pytest.mark.usefixtures("short_keep_alive")
async def test_a_connection_without_a_whole_request_is_closed_at_the_keep_alive_timeout(
    start_relay: StartRelay, sent: bytes
) -> None:
    """Silent, or with an unfinished request (which does not count as one, as in Hypercorn)."""
    relay = await start_relay()
    stream = await connect(relay)
    opened = trio.current_time()
    await stream.send_all(sent)
    with trio.fail_after(10):
        assert await read_until_closed(stream) == b""
    assert trio.current_time() - opened >= KEEP_ALIVE_SECONDS * 0.9


@pytest.mark.usefixtures("short_keep_alive")
async def test_a_keep_alive_connection_idle_after_its_request_is_closed_too(
    start_relay: StartRelay,
) -> None:
    """After a response the connection is idle again and is closed at the timeout. (Under
    Hypercorn's own timer it never was: the restart after a response runs in Quart-Trio's
    already-cancelled scope, and the timer never starts.)"""
    relay = await start_relay()
    stream = await connect(relay)
    await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
    with trio.fail_after(10):
        response = await read_response(stream)
        answered = trio.current_time()
        assert response.startswith(b"HTTP/1.1 200")
        assert b"connection: close" not in response.lower()  # kept alive, then idle
        assert await read_until_closed(stream) == b""
    assert trio.current_time() - answered >= KEEP_ALIVE_SECONDS * 0.9


@pytest.mark.usefixtures("short_keep_alive")
async def test_an_accepted_websocket_is_never_closed_for_idleness(
    start_relay: StartRelay,
) -> None:
    relay = await start_relay()
    stream = await connect(relay)
    await stream.send_all(_UPGRADE.format(path="/ws/producer").encode())
    with trio.fail_after(10):
        answer = await stream.receive_some(65536)
    assert answer.startswith(b"HTTP/1.1 101")
    # Proving a negative takes waiting: three keep-alive timeouts, then the socket is open.
    with trio.move_on_after(3 * KEEP_ALIVE_SECONDS):
        assert await stream.receive_some(65536) != b"", "closed while idle"
        raise AssertionError("the relay sent something unasked")
    await stream.send_all(client_frame(b"\x03\xe8", opcode=0x8))  # close 1000
    with trio.fail_after(10):
        assert await read_until_closed(stream) == b"\x88\x02\x03\xe8"  # the close, 1000


async def test_the_timer_is_a_deadline_on_the_read_loops_scope() -> None:
    """Restarting sets the deadline keep_alive_timeout from now (now once the server is
    terminating), stopping lifts it; no task is started either way."""
    terminated = trio.Event()
    timer = IdleTimer(5.0, terminated)

    async def action() -> None:  # pragma: no cover - must not run
        raise AssertionError("Hypercorn's idle task was started")

    await timer.restart(None, action)  # a new connection
    assert timer.scope.deadline == pytest.approx(trio.current_time() + 5.0)
    await timer.stop()  # its request arrived
    assert timer.scope.deadline == float("inf")
    terminated.set()
    await timer.restart(None, action)  # idle again, the server stopping
    assert timer.scope.deadline == pytest.approx(trio.current_time())
