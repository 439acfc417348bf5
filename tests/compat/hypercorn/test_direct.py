"""DirectWebSocket writes whole frames, whatever is cancelled and whoever else writes."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from hypercorn.events import RawData
from hypercorn.trio.tcp_server import TCPServer
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.extensions import PerMessageDeflate

from triorelay.compat.hypercorn import DirectWebSocket
from triorelay.compat.hypercorn.direct import SendLock
from triorelay.compat.hypercorn.reads import ENDED
from triorelay.wire.frames import serialize_close


class _Socket:
    """A non-blocking socket whose send buffer has ``room`` bytes left (it never drains)."""

    def __init__(self, wire: bytearray, room: int) -> None:
        self.wire = wire
        self.room = room

    def send(self, data: bytes) -> int:
        if not self.room:
            raise BlockingIOError
        taken = data[: self.room]
        self.room -= len(taken)
        self.wire += taken
        return len(taken)


class _Stream:
    """Hypercorn's trio stream: ``send_all`` waits for ``drained`` before taking the rest."""

    def __init__(self, room: int) -> None:
        self.wire = bytearray()
        self.socket = type("SocketStreamSocket", (), {})()
        self.socket._sock = _Socket(self.wire, room)
        self.drained = trio.Event()

    async def send_all(self, data: bytes) -> None:
        await self.drained.wait()
        self.wire += data


class _Protocol:
    def __init__(self) -> None:
        self.events: list[Any] = []

    async def handle(self, event: Any) -> None:
        self.events.append(event)


class _TCPServer:
    """What DirectWebSocket and ``TCPServer.protocol_send`` use of a TCPServer."""

    def __init__(self, room: int) -> None:
        self.send_lock = trio.Lock()
        self.stream = _Stream(room)
        self.protocol = _Protocol()


class _Negotiated(PerMessageDeflate):
    """permessage-deflate as a handshake that agreed on it leaves it."""

    def enabled(self) -> bool:
        return True


class _WSStream:
    """What DirectWebSocket reads of a WSStream: closed or not, and its wsproto connection."""

    def __init__(self, compressed: bool = False) -> None:
        self.closed = False
        extensions = [_Negotiated()] if compressed else []
        self.connection = WSConnection(ConnectionType.SERVER, extensions=extensions)


def direct_socket(room: int, compressed: bool = False) -> tuple[DirectWebSocket, _TCPServer]:
    tcp_server = _TCPServer(room)
    _, receive_channel = trio.open_memory_channel[Any](1)
    ws_stream = _WSStream(compressed)
    return DirectWebSocket(ws_stream, tcp_server, receive_channel), tcp_server


async def hypercorn_sends(tcp_server: _TCPServer, data: bytes) -> None:
    """Hypercorn's own write path (a close frame, a pong), run on the fake server."""
    await TCPServer.protocol_send(tcp_server, RawData(data=data))  # type: ignore[arg-type]


def client_reads(wire: bytes) -> list[Any]:
    """The frames a client parses from ``wire``; a cut frame shows as a failure close."""
    connection = WSConnection(ConnectionType.CLIENT)
    connection.receive_data(wire)
    return list(connection.events())


@pytest.mark.timeout(5)
async def test_cancelled_after_a_partial_write_the_frame_is_still_finished() -> None:
    """A writer cancelled right after the socket took part of its frame still writes the rest
    before Hypercorn's close frame (before the fix, the close landed inside the data frame)."""
    direct, tcp_server = direct_socket(room=100)
    payload = b"x" * 1000
    async with trio.open_nursery() as nursery:

        async def cancelled_writer() -> None:
            with trio.CancelScope() as scope:
                scope.cancel()  # cancelled before it runs: the next checkpoint raises
                await direct.send_messages([payload])

        nursery.start_soon(cancelled_writer)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(hypercorn_sends, tcp_server, serialize_close(1001, "bye"))
        await trio.testing.wait_all_tasks_blocked()
        tcp_server.stream.drained.set()
    events = client_reads(bytes(tcp_server.stream.wire))
    assert len(events) == 2, events
    assert isinstance(events[0], BytesMessage)
    assert events[0].data == payload
    assert isinstance(events[1], CloseConnection)
    assert (events[1].code, events[1].reason) == (1001, "bye")


@pytest.mark.timeout(5)
async def test_a_writer_waiting_for_the_lock_is_cancelled_without_writing() -> None:
    """Cancelled while another write holds the lock, a writer leaves no byte on the wire."""
    direct, tcp_server = direct_socket(room=0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hypercorn_sends, tcp_server, serialize_close(1000))
        await trio.testing.wait_all_tasks_blocked()  # Hypercorn holds the lock, blocked
        with trio.CancelScope() as scope:
            nursery.start_soon(trio.testing.wait_all_tasks_blocked)
            scope.deadline = trio.current_time()  # give up at once
            await direct.send_messages([b"never"])
        tcp_server.stream.drained.set()
    assert scope.cancelled_caught
    assert bytes(tcp_server.stream.wire) == serialize_close(1000)


@pytest.mark.timeout(5)
async def test_a_ping_cut_by_a_full_socket_is_finished_before_other_frames() -> None:
    """A ping the socket takes only part of is finished under the lock; the relay's next
    message and Hypercorn's close come after it, whole."""
    direct, tcp_server = direct_socket(room=1)
    frame = direct.ping_nowait()
    assert frame is not None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(direct.finish_write, frame)
        await trio.testing.wait_all_tasks_blocked()
        after: list[bytes | str] = [b"after"]
        nursery.start_soon(direct.send_messages, after)
        await trio.testing.wait_all_tasks_blocked()  # waiting for the lock, in this order
        nursery.start_soon(hypercorn_sends, tcp_server, serialize_close(1000))
        await trio.testing.wait_all_tasks_blocked()
        assert direct.ping_nowait() is None, "no ping while another write holds the lock"
        tcp_server.stream.drained.set()
    events = client_reads(bytes(tcp_server.stream.wire))
    assert [type(event) for event in events] == [Ping, BytesMessage, CloseConnection]


@pytest.mark.timeout(5)
async def test_a_ping_never_goes_around_another_writers_frame() -> None:
    """Hypercorn writing between ping_nowait and finish_write: its frame stays whole, and the
    ping, which finds the lock taken, is skipped (before the fix, ping_nowait had already
    written part of the ping, and the close landed inside it)."""
    direct, tcp_server = direct_socket(room=1)
    frame = direct.ping_nowait()
    assert frame is not None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hypercorn_sends, tcp_server, serialize_close(1000))
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(direct.finish_write, frame)
        await trio.testing.wait_all_tasks_blocked()
        tcp_server.stream.drained.set()
    assert bytes(tcp_server.stream.wire) == serialize_close(1000)


@pytest.mark.timeout(5)
async def test_a_ping_is_skipped_when_the_socket_is_full() -> None:
    """A full socket takes nothing: the ping is skipped, the lock released at once."""
    direct, tcp_server = direct_socket(room=0)
    frame = direct.ping_nowait()
    assert frame is not None
    await direct.finish_write(frame)
    assert bytes(tcp_server.stream.wire) == b""
    assert not tcp_server.send_lock.locked()


@pytest.mark.timeout(5)
async def test_no_ping_after_the_connection_closed() -> None:
    """A ping decided before the connection closed is not written after it."""
    ws_stream, tcp_server = _WSStream(), _TCPServer(room=100)
    _, receive_channel = trio.open_memory_channel[Any](1)
    direct = DirectWebSocket(ws_stream, tcp_server, receive_channel)
    frame = direct.ping_nowait()
    assert frame is not None
    ws_stream.closed = True  # Hypercorn sent its close frame meanwhile
    await direct.finish_write(frame)
    assert bytes(tcp_server.stream.wire) == b""


# -- direct writes from another task (fan-out) -----------------------------------------------


async def test_the_connections_free_lock_is_replaced_by_one_any_task_may_release() -> None:
    """A DirectWebSocket made on a connection whose send lock is free installs a SendLock
    (one that a task other than the one that took it may release); a taken lock is kept, and
    then no direct write is tried."""
    _, tcp_server = direct_socket(room=100)
    assert isinstance(tcp_server.send_lock, SendLock)
    held = _TCPServer(room=100)
    held.send_lock.acquire_nowait()
    _, receive_channel = trio.open_memory_channel[Any](1)
    kept = DirectWebSocket(_WSStream(), held, receive_channel)
    assert isinstance(held.send_lock, trio.Lock)
    assert kept.send_nowait("x") is False
    assert bytes(held.stream.wire) == b""


@pytest.mark.timeout(5)
async def test_a_direct_write_cut_by_the_socket_is_finished_before_any_other_frame() -> None:
    """send_nowait, from one task, gets part of a frame out: the lock stays taken, Hypercorn's
    close waits for it, and the writer's finish_messages writes the rest and what follows
    first, from another task (before, the lock could only be released by its taker)."""
    direct, tcp_server = direct_socket(room=10)
    payload = b"x" * 1000
    rest = direct.send_nowait(payload)
    assert isinstance(rest, bytes)
    assert tcp_server.send_lock.locked()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hypercorn_sends, tcp_server, serialize_close(1001, "bye"))
        await trio.testing.wait_all_tasks_blocked()  # Hypercorn waits for the lock
        assert direct.send_nowait("not now") is False  # nor anyone else

        async def writer() -> None:
            assert await direct.finish_messages(rest, ["after"])

        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        tcp_server.stream.drained.set()
    events = client_reads(bytes(tcp_server.stream.wire))
    assert [type(event) for event in events] == [BytesMessage, TextMessage, CloseConnection]
    assert events[0].data == payload
    assert not tcp_server.send_lock.locked()


async def test_a_direct_write_takes_nothing_from_a_full_or_busy_socket() -> None:
    """A full socket, or a write under way, leave the wire and the lock as they were."""
    direct, tcp_server = direct_socket(room=0)
    assert direct.send_nowait("full") is False
    assert direct.send_many_nowait(["full", "too"]) is False
    assert not tcp_server.send_lock.locked()
    direct, tcp_server = direct_socket(room=100)
    tcp_server.send_lock.acquire_nowait()
    assert direct.send_nowait("busy") is False
    tcp_server.send_lock.release()
    assert direct.send_nowait("whole") is True
    assert direct.send_many_nowait(["a", "b"]) is True
    events = client_reads(bytes(tcp_server.stream.wire))
    assert [event.data for event in events] == ["whole", "a", "b"]


async def test_no_direct_write_once_the_connection_is_closed() -> None:
    """Hypercorn has closed (or is closing) the connection: nothing more goes out directly."""
    direct, tcp_server = direct_socket(room=100)
    direct._ws_stream.closed = True
    assert direct.send_nowait("late") is False
    assert bytes(tcp_server.stream.wire) == b""


@pytest.mark.timeout(5)
async def test_the_send_lock_hands_over_in_order_and_survives_a_cancelled_waiter() -> None:
    """SendLock, as Hypercorn uses it: waiters get it in turn on release; a waiter cancelled
    while waiting never gets it; any task may release it."""
    lock = SendLock()
    order: list[str] = []
    lock.acquire_nowait()
    async with trio.open_nursery() as nursery:

        async def waiter(name: str) -> None:
            async with lock:
                order.append(name)

        async def gives_up(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
            with trio.CancelScope() as scope:
                task_status.started(scope)
                await lock.acquire()
                order.append("never")

        nursery.start_soon(waiter, "first")
        await trio.testing.wait_all_tasks_blocked()
        cancelled = await nursery.start(gives_up)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter, "second")
        await trio.testing.wait_all_tasks_blocked()
        cancelled.cancel()
        await trio.testing.wait_all_tasks_blocked()
        lock.release()  # not the task that took it: fine
    assert order == ["first", "second"]
    assert not lock.locked()
    with pytest.raises(RuntimeError):
        lock.release()


async def test_no_direct_write_with_compression_on() -> None:
    """With permessage-deflate on, nothing is encoded for a direct write: the compressor is
    stateful, so a batch encoded and then not written could not be encoded again."""
    direct, tcp_server = direct_socket(room=100, compressed=True)
    assert not direct.writes_directly  # so no writer offers it to the hub
    with pytest.raises(RuntimeError, match="never released"):
        direct._direct_lock.release()
    assert direct_socket(room=100)[0].writes_directly
    assert direct.send_nowait("x") is False
    assert direct.send_many_nowait(["x", "y"]) is False
    assert bytes(tcp_server.stream.wire) == b""


@pytest.mark.parametrize(
    "error", [trio.BusyResourceError, trio.BrokenResourceError, trio.ClosedResourceError, OSError]
)
@pytest.mark.timeout(5)
async def test_a_rest_the_stream_refuses_ends_the_write_as_a_failed_one(
    error: type[Exception],
) -> None:
    """The rest of a cut frame goes through the stream's ``send_all``, which refuses it while
    Hypercorn's ``TCPServer._close`` is in ``send_eof`` without the send lock (trio's
    ``SocketStream`` then raises ``BusyResourceError``), or once the socket broke: the write
    fails as a broken socket does (False, the lock free, Hypercorn told the connection
    closed), and nothing escapes to the writer."""
    direct, tcp_server = direct_socket(room=10)

    async def refusing(data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        raise error("refused")

    tcp_server.stream.send_all = refusing  # type: ignore[method-assign]
    assert await direct.send_messages([b"x" * 100]) is False
    assert not tcp_server.send_lock.locked()
    assert [type(event).__name__ for event in tcp_server.protocol.events] == ["Closed"]


@pytest.mark.timeout(5)
async def test_a_write_failing_after_the_connection_ended_tells_nothing() -> None:
    """A late write (the liveness ping's, woken by the stream's close) can fail once the
    connection has ended and ``ReadLoop`` has let its protocol go for the placeholder: False,
    the lock free, and nothing escapes to the writer."""
    direct, tcp_server = direct_socket(room=10)

    async def refusing(data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        tcp_server.protocol = ENDED  # type: ignore[assignment]  # the connection ended meanwhile
        raise trio.ClosedResourceError("closed")

    tcp_server.stream.send_all = refusing  # type: ignore[method-assign]
    assert await direct.send_messages([b"x" * 100]) is False
    assert not tcp_server.send_lock.locked()
