"""The lean WebSocket client of the load generator: wsproto over a raw trio TCP stream.

* :class:`LeanWebSocket` - a minimal client that only reads when asked to. It writes many
  messages in one ``send_all`` (one syscall), and, because nothing reads its socket unless
  asked, it doubles as a truly *stalled* consumer: after the handshake the kernel buffers fill
  and the server sees real backpressure (a trio-websocket client would keep reading into its
  own queue in the background).
* :func:`produce_lean` - the batched sender: every message due in a 1 ms tick in one write.
* :func:`consume_lean` - a consumer, cheaper per message than trio-websocket's.
* :func:`hold_stalled` - a consumer that never reads.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from loadtest.clients import (
    CONNECTION_ERRORS,
    DeliveryCounter,
    DeliveryRecorder,
    Headers,
    ProducerSlot,
    Stopper,
    stop_sending,
    trio_deadline,
    wait_until_ns,
)
from loadtest.codec import encode
from loadtest.endpoints import host_port, resource
from loadtest.stats import RoleStats

logger = logging.getLogger(__name__)

#: Largest number of due messages a lean producer writes in one ``send_all``.
LEAN_BATCH_MESSAGES = 512
#: The lean producer wakes at most once per tick and then writes every message already due.
#: Each message keeps its own scheduled time, so the tick shows up honestly as up to 1 ms of
#: latency; in exchange the ~50 us cost of a loopback ``send`` is paid once per tick instead of
#: once per message.
LEAN_TICK_NS = 1_000_000
#: Bytes asked for per ``receive_some`` by the lean client.
RECEIVE_BYTES = 65536
#: How much of a refused handshake's body a :class:`LeanHandshakeError` says.
REJECT_BODY_BYTES = 200


class LeanHandshakeError(Exception):
    """The server refused or broke the WebSocket handshake of a :class:`LeanWebSocket`."""


class LeanClosedError(Exception):
    """The peer of a :class:`LeanWebSocket` closed the connection while
    :meth:`~LeanWebSocket.receive_messages` waited: ``code`` and ``reason`` of its close
    frame (``None`` and a description when the TCP connection just ended)."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed by the server: {code} {reason}" if code else reason)
        self.code = code
        self.reason = reason


#: Called by :meth:`LeanWebSocket.pump` with each whole incoming message.
MessageCallback = Callable[[str | bytes | bytearray], None]

#: What :meth:`LeanWebSocket.open` raises when a connection cannot be made.
LEAN_CONNECT_ERRORS: tuple[type[Exception], ...] = (
    *CONNECTION_ERRORS,
    LeanHandshakeError,
    trio.TooSlowError,
)


async def open_tcp(host: str, port: int) -> trio.SocketStream:
    """A TCP connection to ``host``: ``trio.open_tcp_stream``, without its name resolution and
    its happy-eyeballs nursery when ``host`` is an IP address (measured here, 5,000 lean
    connections set up, held and closed: 6.4 s of generator CPU through it, 5.6 s without)."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return await trio.open_tcp_stream(host, port)
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


class LeanWebSocket:
    """A minimal WebSocket client: wsproto over a raw trio TCP stream, reading only on request.

    Use :meth:`open`; :meth:`send_texts` writes many messages in one ``send_all``; :meth:`pump`
    reads and counts incoming messages (answering pings) until the peer closes, and
    :meth:`receive_messages` returns the next whole messages instead. Nothing reads the
    socket unless one of them runs, which is how a stalled consumer is made. Not safe for
    concurrent :meth:`send_texts` calls from several tasks except through the internal lock,
    which also serialises pong replies.
    """

    def __init__(
        self, stream: trio.SocketStream, ws: WSConnection, subprotocol: str | None = None
    ) -> None:
        self._stream = stream
        self._ws = ws
        self._send_lock = trio.Lock()
        self.received = 0
        #: The subprotocol the server chose (``None``: none).
        self.subprotocol = subprotocol
        # The parts received so far of a message that :meth:`receive_messages` has not
        # returned yet (wsproto hands over a frame in as many pieces as reads carried it).
        self._text: list[str] = []
        self._binary: list[bytes] = []
        # A close that came after messages receive_messages returned: raised on its next call.
        self._closed: LeanClosedError | None = None

    @staticmethod
    async def open(
        url: str,
        *,
        connect_timeout_s: float = 10.0,
        headers: Headers = (),
        subprotocols: Sequence[str] = (),
    ) -> LeanWebSocket:
        """Connect and complete the handshake (sending ``headers``, offering
        ``subprotocols``); the caller must :meth:`aclose` the result.

        Raises :class:`LeanHandshakeError` if the server rejects, ``OSError`` or
        ``trio.TooSlowError`` on network failure or timeout.
        """
        host, port = host_port(url)
        with trio.fail_after(connect_timeout_s):
            stream = await open_tcp(host, port)
            try:
                ws = WSConnection(ConnectionType.CLIENT)
                request = Request(
                    host=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                    target=resource(url),
                    extra_headers=list(headers),
                    subprotocols=list(subprotocols),
                )
                await stream.send_all(ws.send(request))
                rejected: RejectConnection | None = None
                body = b""
                done = False
                while not done and len(body) < REJECT_BODY_BYTES:
                    data = await stream.receive_some(RECEIVE_BYTES)
                    if not data:
                        if rejected is not None:
                            break  # the body ends with the connection
                        raise LeanHandshakeError("connection closed during the handshake")
                    ws.receive_data(data)
                    for event in ws.events():
                        if isinstance(event, AcceptConnection):
                            # Frames that came with the 101 stay in wsproto for the next
                            # read of events (receive_messages looks there first).
                            return LeanWebSocket(stream, ws, event.subprotocol)
                        if isinstance(event, RejectConnection):
                            rejected, done = event, not event.has_body
                        elif isinstance(event, RejectData):
                            body, done = body + event.data, event.body_finished
                assert rejected is not None
                said = body[:REJECT_BODY_BYTES].decode("utf-8", "replace").strip()
                raise LeanHandshakeError(
                    f"rejected with HTTP {rejected.status_code}" + (f": {said}" if said else "")
                )
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise

    async def send_texts(self, texts: list[str]) -> None:
        """Send each text as one frame, all in one ``send_all``."""
        ws = self._ws
        data = b"".join([ws.send(Message(data=t)) for t in texts])
        async with self._send_lock:
            await self._stream.send_all(data)

    async def pump(
        self, on_message: Callable[[str | bytes | bytearray], None] | None = None
    ) -> None:
        """Read until the peer closes, counting whole messages in :attr:`received`.

        Pings are answered; a close from the peer is answered and ends the pump. Raises
        ``trio.BrokenResourceError`` / ``OSError`` if the connection breaks.
        """
        ws = self._ws
        while True:
            data = await self._stream.receive_some(RECEIVE_BYTES)
            ws.receive_data(data or None)
            replies = []
            for event in ws.events():
                if isinstance(event, TextMessage | BytesMessage):
                    if event.message_finished:
                        self.received += 1
                        if on_message is not None:
                            on_message(event.data)
                elif isinstance(event, Ping):
                    replies.append(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    if ws.state.name == "REMOTE_CLOSING":
                        replies.append(ws.send(event.response()))
                    if replies:
                        async with self._send_lock:
                            await self._stream.send_all(b"".join(replies))
                    return
            if replies:
                async with self._send_lock:
                    await self._stream.send_all(b"".join(replies))
            if not data:
                return

    async def receive_messages(self) -> list[str | bytes]:
        """Return the next whole messages (at least one), reading the socket only when wsproto
        holds none; pings are answered.

        Raises :class:`LeanClosedError` when the peer closes (its close is answered; messages
        that came before it are returned first), ``trio.BrokenResourceError`` / ``OSError``
        if the connection breaks. Not to be mixed with a running :meth:`pump`.
        """
        ws = self._ws
        while True:
            if self._closed is not None:
                raise self._closed
            messages: list[str | bytes] = []
            replies: list[bytes] = []
            for event in ws.events():
                if isinstance(event, TextMessage):
                    self._text.append(event.data)
                    if event.message_finished:
                        messages.append("".join(self._text))
                        self._text = []
                elif isinstance(event, BytesMessage):
                    self._binary.append(bytes(event.data))
                    if event.message_finished:
                        messages.append(b"".join(self._binary))
                        self._binary = []
                elif isinstance(event, Ping):
                    replies.append(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    if ws.state.name == "REMOTE_CLOSING":
                        replies.append(ws.send(event.response()))
                    self._closed = LeanClosedError(event.code, event.reason or "")
                    break
            if replies:
                async with self._send_lock:
                    await self._stream.send_all(b"".join(replies))
            if messages:
                self.received += len(messages)
                return messages
            if self._closed is not None:
                raise self._closed
            data = await self._stream.receive_some(RECEIVE_BYTES)
            if not data:
                raise LeanClosedError(None, "the server ended the connection without a close")
            ws.receive_data(data)

    def holds_nothing(self) -> bool:
        """Whether every byte received so far was returned as whole messages: wsproto holds
        no part of a frame or of a message, and neither does this object. Only then may
        someone else (:meth:`handover`) parse the stream from the next byte on. Reads
        wsproto 1.3.2's decoders (pinned; checked by tests/loadtest/test_loadtest_polled.py).
        """
        connection = self._ws.connection
        assert connection is not None  # the handshake is done
        proto = connection._proto
        decoder = proto._frame_decoder
        return (
            decoder.header is None
            and not len(decoder.buffer)
            and proto._message_decoder.opcode is None
            and not self._text
            and not self._binary
        )

    def handover(self) -> tuple[socket.socket, WSConnection]:
        """Hand the connection to a thread that does all its I/O from now on (the unbatched
        sender, :mod:`loadtest.unbatched`): return a socket on a duplicate of the descriptor
        (the caller closes it) and the wsproto connection.

        Nothing may read or write through this object afterwards; :meth:`aclose` still closes
        the original descriptor (the TCP connection ends when both are closed).
        """
        return socket.socket(fileno=os.dup(self._stream.socket.fileno())), self._ws

    async def send_close(self, code: int = 1000) -> None:
        """Send a close frame (without waiting for the answer; then :meth:`aclose`), unless
        the close handshake is already over (the server closed first and was answered)."""
        async with self._send_lock:
            if self._ws.state not in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
                return
            await self._stream.send_all(self._ws.send(CloseConnection(code=code)))

    async def aclose(self) -> None:
        """Close the TCP stream without a close handshake (the peer sees an abrupt close)."""
        await trio.aclose_forcefully(self._stream)


async def open_counted(
    url: str,
    *,
    connect_timeout_s: float,
    headers: Sequence[tuple[bytes, bytes]],
    stats: RoleStats,
    what: str,
    task_status: trio.TaskStatus[bool],
    subprotocols: Sequence[str] = (),
) -> LeanWebSocket | None:
    """Connect one of the generator's connections (offering ``subprotocols``), counted as
    connected or failed (the error noted as ``<what> connect: ...``);
    ``task_status.started(True/False)`` says which. Returns the connection, or None if it
    could not be made."""
    try:
        lean = await LeanWebSocket.open(
            url, connect_timeout_s=connect_timeout_s, headers=headers, subprotocols=subprotocols
        )
    except LEAN_CONNECT_ERRORS as exc:
        stats.counters.failed_connects += 1
        stats.note_error(f"{what} connect: {exc!r}")
        task_status.started(False)
        return None
    stats.counters.connected += 1
    task_status.started(True)
    return lean


async def produce_lean(
    slot: ProducerSlot, *, task_status: trio.TaskStatus[bool] = trio.TASK_STATUS_IGNORED
) -> None:
    """Like :func:`~loadtest.clients.produce`, on a :class:`LeanWebSocket` that batches all due
    messages per write.

    The sender wakes at most once per :data:`LEAN_TICK_NS` and sends every message already due
    (up to :data:`LEAN_BATCH_MESSAGES`) in one write, each stamped with its own scheduled time.
    """
    stats = slot.stats
    counters = stats.counters
    lean = await open_counted(
        slot.url,
        connect_timeout_s=slot.connect_timeout_s,
        headers=slot.headers,
        stats=stats,
        what="lean producer",
        task_status=task_status,
    )
    if lean is None:
        return
    try:
        schedule, plan = await slot.wait_for_start()
        sent = 0
        sending_done = False
        all_acked = trio.Event()

        def on_ack(_message: str | bytes | bytearray) -> None:
            if sending_done and lean.received >= sent:
                all_acked.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(lean.pump, on_ack)
            last_wake = 0
            with trio.move_on_at(trio_deadline(plan.send_cutoff_ns)):
                while sent < schedule.count:
                    await wait_until_ns(max(schedule.send_time_ns(sent), last_wake + LEAN_TICK_NS))
                    last_wake = time.monotonic_ns()
                    due = min(schedule.due_count(time.monotonic_ns()), sent + LEAN_BATCH_MESSAGES)
                    texts = [
                        encode(plan.run, plan.index, n, schedule.send_time_ns(n), plan.padding)
                        for n in range(sent, due)
                    ]
                    await lean.send_texts(texts)
                    counters.sent += len(texts)
                    sent = due
                    stats.sent_per_producer[plan.index] = sent
            sending_done = True
            await stop_sending(plan, lambda: lean.received < sent, all_acked)
            counters.acks += lean.received
            nursery.cancel_scope.cancel()
    except CONNECTION_ERRORS as exc:
        stats.note_error(f"lean producer: {exc!r}")
    finally:
        await lean.aclose()


async def hold_stalled(
    url: str,
    stats: RoleStats,
    stopper: Stopper,
    *,
    connect_timeout_s: float = 10.0,
    headers: Headers = (),
    task_status: trio.TaskStatus[bool] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Connect a consumer that never reads after the handshake (sending ``headers`` on it);
    hold it until ``stopper`` stops.

    ``started(True/False)`` reports whether the connection was made.
    """
    lean = await open_counted(
        url,
        connect_timeout_s=connect_timeout_s,
        headers=headers,
        stats=stats,
        what="stalled consumer",
        task_status=task_status,
    )
    if lean is None:
        return
    try:
        with stopper.scope():
            await trio.sleep_forever()
    finally:
        await lean.aclose()


#: How long a lean consumer leaving may take to send its close frame.
CLOSE_TIMEOUT_S = 1.0
#: What ends a lean consumer early (counted as an error unless it was told to stop).
CONSUMER_ERRORS: tuple[type[Exception], ...] = (LeanClosedError, *CONNECTION_ERRORS)


async def consume_lean(
    url: str,
    run_id: str,
    stats: RoleStats,
    counter: DeliveryCounter,
    stopper: Stopper,
    *,
    connect_timeout_s: float = 10.0,
    headers: Headers = (),
    task_status: trio.TaskStatus[bool] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Like :func:`~loadtest.clients.consume`, on a :class:`LeanWebSocket`: one task reading
    the socket, every whole message of a read recorded at once (trio-websocket adds a reader
    task and a queue per connection, a few task switches per message).

    Leaves with a close frame (1000) and without waiting for the answer.
    """
    recorder = DeliveryRecorder(run_id, stats, counter)
    lean = await open_counted(
        url,
        connect_timeout_s=connect_timeout_s,
        headers=headers,
        stats=stats,
        what="consumer",
        task_status=task_status,
    )
    if lean is None:
        return
    async with consuming(lean, recorder, stats, stopper):
        while True:
            messages = await lean.receive_messages()
            recorder.record(messages, time.monotonic_ns())


@contextlib.asynccontextmanager
async def consuming(
    lean: LeanWebSocket,
    recorder: DeliveryRecorder,
    stats: RoleStats,
    stopper: Stopper,
    what: str = "consumer",
    errors: tuple[type[Exception], ...] = CONSUMER_ERRORS,
) -> AsyncIterator[None]:
    """A connected consumer's reading, in its stopper's scope: ``errors`` ending it early are
    noted as ``what``'s unless it was told to stop; whatever ended it, it leaves
    (:func:`leave`)."""
    try:
        with stopper.scope():
            yield
    except errors as exc:
        if not stopper.stopped:
            stats.note_error(f"{what}: {exc!r}")
    finally:
        await leave(lean, recorder, stats)


async def leave(lean: LeanWebSocket, recorder: DeliveryRecorder, stats: RoleStats) -> None:
    """A consumer leaving: its deliveries counted per consumer, a close frame (1000) sent
    within :data:`CLOSE_TIMEOUT_S` without waiting for the answer, the socket closed."""
    stats.per_consumer_delivered.append(recorder.delivered)
    with trio.move_on_after(CLOSE_TIMEOUT_S) as leaving:
        leaving.shield = True
        with contextlib.suppress(*CONNECTION_ERRORS):  # already gone
            await lean.send_close()
    await lean.aclose()
