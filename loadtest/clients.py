"""WebSocket clients for the load generator (the I/O layer).

* :func:`consume` - a trio-websocket consumer that decodes the fixed message prefix and records
  latency from the scheduled send time.
* :func:`produce` - an open-loop producer on trio-websocket, with a drain task for echoes/acks.
* :class:`LeanWebSocket` - a minimal client on wsproto over a raw trio TCP stream. It batches
  every due message into one ``send_all`` (one syscall) for high-rate producers, and, because it
  only reads when asked to, it doubles as a truly *stalled* consumer: after the handshake nothing
  reads the socket, so the kernel buffers fill and the server sees real backpressure (a
  trio-websocket client would keep reading into its own queue in the background).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass, field

import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from loadtest.codec import CodecError, decode, encode
from loadtest.endpoints import host_port, resource
from loadtest.schedule import RateSchedule
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
#: Per-connection trio-websocket queue bound (messages), to keep generator memory bounded:
#: 1000 consumers x 64 messages x 1 kB = 64 MB at worst.
WS_MESSAGE_QUEUE = 64


#: Extra handshake headers (``Authorization: Bearer ...`` with ``--token``), as both clients
#: take them.
Headers = Sequence[tuple[bytes, bytes]]


def open_client(
    url: str, connect_timeout_s: float, headers: Headers = ()
) -> AbstractAsyncContextManager[WebSocketConnection]:
    """A trio-websocket client as every scenario opens it (bounded connect and close), sending
    ``headers`` on the handshake."""
    return open_websocket_url(
        url,
        extra_headers=list(headers),
        connect_timeout=connect_timeout_s,
        disconnect_timeout=2.0,
        message_queue_size=WS_MESSAGE_QUEUE,
    )


#: Exceptions that mean "this connection failed" (peer or network), not a bug in the generator.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    ConnectionClosed,
    HandshakeError,
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)


def trio_deadline(monotonic_ns: int) -> float:
    """Convert a ``time.monotonic_ns()`` instant to a trio deadline (``inf`` stays ``inf``)."""
    return trio.current_time() + (monotonic_ns - time.monotonic_ns()) / 1e9


class Stopper:
    """Lets one party end many tasks' waits early: each task waits inside :meth:`scope`.

    :meth:`stop` cancels every open scope (and any opened later); :meth:`set_deadline` moves
    their shared deadline. Tasks then leave their ``async with`` blocks normally, so connections
    close with a proper close handshake.
    """

    def __init__(self) -> None:
        self._scopes: set[trio.CancelScope] = set()
        self._deadline = math.inf
        self.stopped = False

    @contextmanager
    def scope(self) -> Iterator[trio.CancelScope]:
        """Enter a cancel scope that :meth:`stop` cancels and :meth:`set_deadline` moves."""
        cs = trio.CancelScope(deadline=self._deadline)
        if self.stopped:
            cs.cancel()
        self._scopes.add(cs)
        try:
            with cs:
                yield cs
        finally:
            self._scopes.discard(cs)

    def stop(self) -> None:
        """Cancel every current and future scope."""
        self.stopped = True
        for cs in self._scopes:
            cs.cancel()

    def set_deadline(self, deadline: float) -> None:
        """Give every current and future scope this trio deadline."""
        self._deadline = deadline
        for cs in self._scopes:
            cs.deadline = deadline


@dataclass
class DeliveryCounter:
    """Counts deliveries across consumers and fires :attr:`reached` at a target.

    The target is unknown (``None``) until the producers have finished sending.
    """

    delivered: int = 0
    target: int | None = None
    reached: trio.Event = field(default_factory=trio.Event)

    def add(self, n: int = 1) -> None:
        """Count ``n`` deliveries."""
        self.delivered += n
        if self.target is not None and self.delivered >= self.target:
            self.reached.set()

    def set_target(self, target: int) -> None:
        """Set the expected total; fires at once if it is already met."""
        self.target = target
        if self.delivered >= target:
            self.reached.set()


async def consume(
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
    """Connect a consumer to ``url`` (with ``headers``); record every message until ``stopper``
    says stop.

    Messages of another run (a different ``run_id``) are counted as ``foreign`` and ignored.
    Reports ``task_status.started(True)`` once connected, or ``started(False)`` when the
    connection could not be made (counted in ``stats``). Errors after connecting are counted, not
    raised. Latency is receive time minus the message's scheduled time.
    """
    ledger = stats.ledger
    latency = stats.latency
    counters = stats.counters
    delivered = 0
    started = False
    try:
        async with open_client(url, connect_timeout_s, headers) as ws:
            counters.connected += 1
            started = True
            task_status.started(True)
            with stopper.scope():
                while True:
                    text = await ws.get_message()
                    now = time.monotonic_ns()
                    try:
                        header = decode(text) if isinstance(text, str) else decode(text.decode())
                    except (CodecError, UnicodeDecodeError):
                        counters.bad_frames += 1
                        continue
                    if header.run != run_id:
                        counters.foreign += 1
                        continue
                    latency.record_ns(now - header.scheduled_ns)
                    if ledger is not None:
                        ledger.record(header.producer, header.seq)
                    delivered += 1
                    counters.delivered += 1
                    counter.add()
    except CONNECTION_ERRORS as exc:
        if not started:
            counters.failed_connects += 1
            stats.note_error(f"consumer connect: {exc!r}")
            task_status.started(False)
        elif not stopper.stopped:
            stats.note_error(f"consumer: {exc!r}")
    finally:
        if started:
            stats.per_consumer_delivered.append(delivered)


@dataclass
class ProducerPlan:
    """What one producer sends: run id, index, padding, and how long it may keep trying.

    ``send_cutoff_ns`` ends sending (messages still unsent are counted as offered, not sent);
    ``drain_deadline_ns`` ends the wait for outstanding acks. Both are ``monotonic_ns`` instants.
    """

    run: str
    index: int
    padding: str
    send_cutoff_ns: int
    drain_deadline_ns: int
    expect_acks: bool = True
    #: Called once when this producer stops sending (before the ack drain).
    on_sending_done: Callable[[], None] = lambda: None


async def _wait_until_ns(due_ns: int) -> None:
    delay = due_ns - time.monotonic_ns()
    if delay > 0:
        await trio.sleep(delay / 1e9)


@dataclass(frozen=True)
class ProducerSlot:
    """One producer of a run, for either producer client (:func:`produce`, :func:`produce_lean`).

    The producer connects to ``url`` (sending ``headers`` on the handshake) and counts into
    ``stats``; once ``schedule_ready()`` fires, ``get_plan(index)`` gives its schedule and plan.
    """

    url: str
    stats: RoleStats
    schedule_ready: Callable[[], trio.Event]
    get_plan: Callable[[int], tuple[RateSchedule, ProducerPlan]]
    index: int
    connect_timeout_s: float = 10.0
    headers: Headers = field(default=(), repr=False)

    async def wait_for_start(self) -> tuple[RateSchedule, ProducerPlan]:
        """Wait for the start; return this producer's schedule and plan (counted as offered)."""
        await self.schedule_ready().wait()
        schedule, plan = self.get_plan(self.index)
        self.stats.counters.offered += schedule.count
        return schedule, plan


async def _stop_sending(plan: ProducerPlan, unacked: Callable[[], bool], acked: trio.Event) -> None:
    """Report that sending stopped, then wait for ``acked`` while ``unacked()``, until the drain
    deadline (not at all with ``plan.expect_acks`` false)."""
    plan.on_sending_done()
    if plan.expect_acks and unacked():
        with trio.move_on_at(trio_deadline(plan.drain_deadline_ns)):
            await acked.wait()


async def produce(
    slot: ProducerSlot, *, task_status: trio.TaskStatus[bool] = trio.TASK_STATUS_IGNORED
) -> None:
    """Connect a trio-websocket producer, wait for the start, send on schedule, drain acks.

    ``started(True/False)`` reports whether the connection was made. The drain task counts
    every frame received (echo or ``{"id": N}``) as an ack.
    """
    stats = slot.stats
    counters = stats.counters
    started = False
    try:
        async with open_client(slot.url, slot.connect_timeout_s, slot.headers) as ws:
            counters.connected += 1
            started = True
            task_status.started(True)
            schedule, plan = await slot.wait_for_start()
            acked = 0
            sent = 0
            all_acked = trio.Event()
            sending_done = False

            async def drain() -> None:
                nonlocal acked
                while True:
                    await ws.get_message()
                    acked += 1
                    counters.acks += 1
                    if sending_done and acked >= sent:
                        all_acked.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain)
                with trio.move_on_at(trio_deadline(plan.send_cutoff_ns)):
                    for n in range(schedule.count):
                        due = schedule.send_time_ns(n)
                        await _wait_until_ns(due)
                        await ws.send_message(encode(plan.run, plan.index, n, due, plan.padding))
                        sent += 1
                        counters.sent += 1
                        stats.sent_per_producer[plan.index] = sent
                sending_done = True
                await _stop_sending(plan, lambda: acked < sent, all_acked)
                nursery.cancel_scope.cancel()
    except CONNECTION_ERRORS as exc:
        if not started:
            counters.failed_connects += 1
            stats.note_error(f"producer connect: {exc!r}")
            task_status.started(False)
        else:
            stats.note_error(f"producer: {exc!r}")


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
            stream = await trio.open_tcp_stream(host, port)
            try:
                ws = WSConnection(ConnectionType.CLIENT)
                request = Request(
                    host=f"{host}:{port}",
                    target=resource(url),
                    extra_headers=list(headers),
                    subprotocols=list(subprotocols),
                )
                await stream.send_all(ws.send(request))
                while True:
                    data = await stream.receive_some(RECEIVE_BYTES)
                    if not data:
                        raise LeanHandshakeError("connection closed during the handshake")
                    ws.receive_data(data)
                    for event in ws.events():
                        if isinstance(event, AcceptConnection):
                            # Frames that came with the 101 stay in wsproto for the next
                            # read of events (receive_messages looks there first).
                            return LeanWebSocket(stream, ws, event.subprotocol)
                        if isinstance(event, RejectConnection):
                            raise LeanHandshakeError(f"rejected with HTTP {event.status_code}")
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

    async def aclose(self) -> None:
        """Close the TCP stream without a close handshake (the peer sees an abrupt close)."""
        await trio.aclose_forcefully(self._stream)


async def produce_lean(
    slot: ProducerSlot, *, task_status: trio.TaskStatus[bool] = trio.TASK_STATUS_IGNORED
) -> None:
    """Like :func:`produce`, on a :class:`LeanWebSocket` that batches all due messages per write.

    The sender wakes at most once per :data:`LEAN_TICK_NS` and sends every message already due
    (up to :data:`LEAN_BATCH_MESSAGES`) in one write, each stamped with its own scheduled time.
    """
    stats = slot.stats
    counters = stats.counters
    try:
        lean = await LeanWebSocket.open(
            slot.url, connect_timeout_s=slot.connect_timeout_s, headers=slot.headers
        )
    except LEAN_CONNECT_ERRORS as exc:
        counters.failed_connects += 1
        stats.note_error(f"lean producer connect: {exc!r}")
        task_status.started(False)
        return
    counters.connected += 1
    task_status.started(True)
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
                    await _wait_until_ns(max(schedule.send_time_ns(sent), last_wake + LEAN_TICK_NS))
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
            await _stop_sending(plan, lambda: lean.received < sent, all_acked)
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
    try:
        lean = await LeanWebSocket.open(url, connect_timeout_s=connect_timeout_s, headers=headers)
    except LEAN_CONNECT_ERRORS as exc:
        stats.counters.failed_connects += 1
        stats.note_error(f"stalled consumer connect: {exc!r}")
        task_status.started(False)
        return
    stats.counters.connected += 1
    task_status.started(True)
    try:
        with stopper.scope():
            await trio.sleep_forever()
    finally:
        await lean.aclose()
