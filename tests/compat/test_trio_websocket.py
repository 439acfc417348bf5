"""trio-websocket's two hangs and slow failure that ``compat/trio_websocket.py`` steps around,
and its wrapper.

Real loopback sockets; the autojump clock passes the timeouts (a hang is every task blocked
until the guard's deadline).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
import trio
import trio.testing
import trio_websocket
from trio_websocket import (
    ConnectionRejected,
    ConnectionTimeout,
    HandshakeError,
    WebSocketConnection,
    WebSocketRequest,
)

from tests.tcp_proxy import reset as tcp_reset
from triorelay.compat import trio_websocket as compat_module
from triorelay.compat.trio_websocket import open_websocket_url

pytestmark = pytest.mark.timeout(30)

#: Far beyond every timeout below: reaching it means the exit never returned.
GUARD_SECONDS = 600

Opener = Callable[..., AbstractAsyncContextManager[WebSocketConnection]]
OPENERS = {"trio-websocket": trio_websocket.open_websocket_url, "compat": open_websocket_url}


def local(
    opener: Opener, port: int, timeout: float = 5
) -> AbstractAsyncContextManager[WebSocketConnection]:
    """``opener``'s client connection to ``port`` on loopback, connect and close each bounded
    by ``timeout``."""
    return opener(
        f"ws://127.0.0.1:{port}/",
        max_message_size=1024,
        connect_timeout=timeout,
        disconnect_timeout=timeout,
    )


@asynccontextmanager
async def silent_peer() -> AsyncIterator[int]:
    """A port that accepts TCP connections and never answers: its number."""

    async def never_answer(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, never_answer, 0)
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def connect_to_silent_peer(opener: Opener) -> BaseException | None:
    """Open a connection to a silent peer (0.5 s connect timeout): what it raised, or None if
    it was still waiting at the guard's deadline."""
    async with silent_peer() as port:
        with trio.move_on_after(GUARD_SECONDS):
            try:
                async with local(opener, port, timeout=0.5):
                    pass
            except Exception as error:
                return error
        return None


async def test_trio_websocket_waits_for_good_on_a_peer_that_never_answers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The upstream behaviour: connect_timeout does not end the attempt (if this fails,
    trio-websocket mended it: the compat deadline can go)."""
    assert await connect_to_silent_peer(trio_websocket.open_websocket_url) is None


async def test_the_compat_connection_attempt_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The wrapper raises ConnectionTimeout when connect_timeout has passed."""
    start = trio.current_time()
    error = await connect_to_silent_peer(open_websocket_url)
    assert isinstance(error, ConnectionTimeout)
    assert trio.current_time() - start == pytest.approx(0.5)


async def close_after_a_reset_with_a_message_unread(opener: Opener) -> bool:
    """A server sends three messages and resets the connection (a TCP RST) while the client,
    which read one, reads no more: the client's reader task is handing the second over, and the
    client's close frame meets the reset. Whether the client's exit returned."""
    reset = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        for i in range(3):
            await ws.send_message(str(i))
        await trio.testing.wait_all_tasks_blocked()  # the client's reader is blocked handing over
        tcp_reset(ws._stream)
        reset.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None)
        with trio.move_on_after(GUARD_SECONDS) as guard:
            async with local(opener, server.port) as ws:
                assert await ws.get_message() == "0"
                await reset.wait()
        nursery.cancel_scope.cancel()
    return not guard.cancelled_caught


async def test_trio_websocket_waits_for_good_when_its_close_meets_a_reset(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The upstream behaviour: the exit waits for a reader task nobody will ever unblock (if
    this fails, trio-websocket mended it: discard_unread can go)."""
    assert not await close_after_a_reset_with_a_message_unread(trio_websocket.open_websocket_url)


async def test_the_compat_close_ends_after_a_reset_with_a_message_unread(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The wrapper's exit returns at once: the unread message is discarded."""
    start = trio.current_time()
    assert await close_after_a_reset_with_a_message_unread(open_websocket_url)
    assert trio.current_time() - start < 1


@pytest.mark.parametrize("name", sorted(OPENERS))
async def test_a_close_that_goes_through_is_the_same_with_both(
    name: str, autojump_clock: trio.testing.MockClock
) -> None:
    """An ordinary client close (1000, answered) with a message left unread: both return, and
    the server sees the close code."""
    closed: list[int | None] = []

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        for i in range(3):
            await ws.send_message(str(i))
        try:
            await ws.get_message()
        except trio_websocket.ConnectionClosed as error:
            closed.append(error.reason.code)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None)
        with trio.fail_after(GUARD_SECONDS):
            async with local(OPENERS[name], server.port) as ws:
                assert await ws.get_message() == "0"
                await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert closed == [1000]


@asynccontextmanager
async def peer_that_ends_the_handshake(how: str) -> AsyncIterator[int]:
    """A port whose peer reads the upgrade request, then resets the connection (``reset``) or
    closes it (``close``) without answering: its number."""

    async def end(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        if how == "reset":
            tcp_reset(stream)
        else:
            stream.socket.close()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, end, 0)
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def connect_to_a_peer_that_ends_the_handshake(
    opener: Opener, how: str
) -> tuple[BaseException | None, float]:
    """What opening a connection raised (5 s connect timeout), and after how long."""
    async with peer_that_ends_the_handshake(how) as port:
        start = trio.current_time()
        try:
            async with local(opener, port):
                pass
        except Exception as error:
            return error, trio.current_time() - start
        return None, trio.current_time() - start


@pytest.mark.parametrize("how", ["reset", "close"])
async def test_the_compat_connect_fails_at_once_when_the_handshake_is_cut(
    how: str, autojump_clock: trio.testing.MockClock
) -> None:
    """A peer that resets or closes the connection instead of answering the upgrade: the
    wrapper raises HandshakeError at once, not ConnectionTimeout at connect_timeout (through
    the patched _abort_web_socket, which raw trio-websocket in this process now has too)."""
    error, seconds = await connect_to_a_peer_that_ends_the_handshake(open_websocket_url, how)
    assert isinstance(error, HandshakeError)
    assert not isinstance(error, ConnectionTimeout)
    assert "ended during the WebSocket handshake" in str(error)
    assert seconds < 1


async def test_trio_websocket_alone_notices_a_cut_handshake_only_at_its_timeout(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upstream behaviour, with trio-websocket's own _abort_web_socket put back: the
    attempt ends with ConnectionTimeout once connect_timeout has passed (if this fails,
    trio-websocket mended it: the patch can go)."""
    monkeypatch.setattr(
        trio_websocket.WebSocketConnection, "_abort_web_socket", compat_module._abort_web_socket
    )
    error, seconds = await connect_to_a_peer_that_ends_the_handshake(
        trio_websocket.open_websocket_url, "reset"
    )
    assert isinstance(error, ConnectionTimeout)
    assert seconds == pytest.approx(5)


async def test_a_refusal_whose_body_is_cut_short_is_a_rejection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A 503 whose body the peer cuts short (no Content-Length, then the connection ends):
    ConnectionRejected with its status, at once, so that the client retries a 503 as it
    should (it got a dead connection, taken for a relay without the framing: for good)."""

    async def refuse(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 503 Service Unavailable\r\n\r\nshutting do")
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, refuse, 0)
        port = listeners[0].socket.getsockname()[1]
        start = trio.current_time()
        with pytest.raises(ConnectionRejected) as rejected:
            async with local(open_websocket_url, port):
                pass
        assert trio.current_time() - start < 1
        nursery.cancel_scope.cancel()
    assert rejected.value.status_code == 503
