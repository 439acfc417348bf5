"""The polled consumer: one reader for every consumer of a process, one wake-up per batch.

The lean consumer (:func:`loadtest.lean.consume_lean`) is a trio task per connection: each
message a fan-out delivers to 100 consumers wakes 100 tasks, each doing a trio socket read and
a wsproto parse, about 90 µs of generator CPU per delivery on this project's 2-core machine.
A 1→100 fan-out at 100 msg/s (10,000 deliveries a second) then fills the generator's core
before the server's, and every run of both servers says ``generator_bound``.

Here each consumer's task connects as the lean one does (the same handshake), then hands its
socket to its process's :class:`Poller` and waits. The poller is one task waiting on an
``epoll`` descriptor of its own: when that is readable it reads each ready socket once
(non-blocking), parses the server's frames itself (:class:`ServerFrames`: unmasked, as servers
send them), and records every whole message with that consumer's
:class:`~loadtest.clients.DeliveryRecorder`, timed when its read returned. Pings are answered
and a close is answered and ends that consumer, as with the lean client; control replies are
a few bytes, written without waiting (one the kernel cannot take at once is dropped and noted).

``--consumer-client polled``; ``compare`` uses it for its fan-outs.
"""

from __future__ import annotations

import select
import socket
import time
from typing import Final

import trio
from wsproto import WSConnection
from wsproto.events import CloseConnection, Pong

from loadtest.clients import DeliveryCounter, DeliveryRecorder, Headers, Stopper
from loadtest.lean import (
    CONSUMER_ERRORS,
    RECEIVE_BYTES,
    LeanClosedError,
    consuming,
    open_counted,
)
from loadtest.stats import RoleStats

TEXT: Final = 0x1
BINARY: Final = 0x2
CLOSE: Final = 0x8
PING: Final = 0x9
PONG: Final = 0xA


class FrameError(Exception):
    """The server sent what no server may (a masked frame, reserved bits or opcodes, a
    continuation with nothing to continue, a new message inside a fragmented one, a
    fragmented or oversized control frame)."""


class ServerFrames:
    """Incremental parser of the frames a server sends (RFC 6455 §5.2, unmasked).

    :meth:`feed` takes the bytes of one read and returns what they completed: each whole
    message (a text or binary frame, or the frames of a fragmented one, joined) as
    ``(opcode, payload)``, and each control frame the same way. Payloads are bytes (text is
    not decoded here: the recorder decodes it, and counts what does not decode).
    """

    __slots__ = ("_buffer", "_opcode", "_parts")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._parts: list[bytes] = []
        self._opcode = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buffer = self._buffer
        buffer += data
        out: list[tuple[int, bytes]] = []
        end = len(buffer)
        at = 0
        while end - at >= 2:
            first, second = buffer[at], buffer[at + 1]
            if second & 0x80:
                raise FrameError("a masked frame from the server")
            if first & 0x70:
                raise FrameError("reserved bits set (no extension was agreed)")
            length = second & 0x7F
            head = 2
            if length == 126:
                if end - at < 4:
                    break
                length, head = int.from_bytes(buffer[at + 2 : at + 4], "big"), 4
            elif length == 127:
                if end - at < 10:
                    break
                length, head = int.from_bytes(buffer[at + 2 : at + 10], "big"), 10
            opcode, fin = first & 0x0F, first & 0x80
            control = opcode >= CLOSE
            # Refused from the header alone, before waiting for a payload that may never end.
            if opcode > PONG or BINARY < opcode < CLOSE:
                raise FrameError(f"reserved opcode {opcode:#x}")
            if control and not fin:
                raise FrameError("a fragmented control frame")
            if control and length > 125:
                raise FrameError("a control frame over 125 bytes")
            if opcode and not control and self._parts:
                raise FrameError("a new message inside a fragmented one")
            if not opcode and not self._parts:
                raise FrameError("a continuation frame with no message to continue")
            if end - at < head + length:
                break
            payload = bytes(buffer[at + head : at + head + length])
            at += head + length
            if control:
                out.append((opcode, payload))
            elif opcode:  # a message's first frame
                if fin:
                    out.append((opcode, payload))
                else:
                    self._opcode, self._parts = opcode, [payload]
            else:
                self._parts.append(payload)
                if fin:
                    out.append((self._opcode, b"".join(self._parts)))
                    self._parts = []
        del buffer[:at]
        return out


class PolledConsumer:
    """One consumer's connection, read by its process's :class:`Poller`."""

    def __init__(self, sock: socket.socket, ws: WSConnection, recorder: DeliveryRecorder):
        sock.setblocking(False)
        self.sock = sock
        self._ws = ws
        self._recorder = recorder
        self._frames = ServerFrames()
        #: Set once the connection ended (:attr:`error` says how).
        self.done = trio.Event()
        self.error: Exception | None = None
        #: Control replies the kernel could not take at once (dropped).
        self.dropped_replies = 0

    def read_ready(self) -> None:
        """Read what the socket holds (one non-blocking read) and record its messages."""
        try:
            data = self.sock.recv(RECEIVE_BYTES)
        except BlockingIOError:
            return
        except OSError as exc:
            self.end(exc)
            return
        now_ns = time.monotonic_ns()
        if not data:
            self.end(LeanClosedError(None, "the server ended the connection without a close"))
            return
        try:
            frames = self._frames.feed(data)
        except FrameError as exc:
            self.end(exc)
            return
        messages: list[str | bytes] = []
        for opcode, payload in frames:
            if opcode in (TEXT, BINARY):
                messages.append(payload)
            elif opcode == PING:
                self._reply(self._ws.send(Pong(payload=payload)))
            elif opcode == CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self._reply(self._ws.send(CloseConnection(code=code)))
                self.end(LeanClosedError(code, payload[2:].decode("utf-8", "replace")))
                break
        if messages:
            self._recorder.record(messages, now_ns)

    def _reply(self, data: bytes) -> None:
        try:
            if self.sock.send(data) == len(data):
                return
        except OSError:
            pass
        self.dropped_replies += 1

    def end(self, error: Exception) -> None:
        """The connection ended with ``error`` (the first call wins)."""
        if not self.done.is_set():
            self.error = error
            self.done.set()


class Poller:
    """Reads every registered :class:`PolledConsumer` of this process from one task."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._consumers: dict[int, PolledConsumer] = {}

    def add(self, consumer: PolledConsumer) -> None:
        fd = consumer.sock.fileno()
        self._epoll.register(fd, select.EPOLLIN)
        self._consumers[fd] = consumer

    def remove(self, consumer: PolledConsumer) -> None:
        fd = consumer.sock.fileno()
        if self._consumers.pop(fd, None) is not None and not self._epoll.closed:
            self._epoll.unregister(fd)  # (closed: the run is ending, and its poller with it)

    async def run(self) -> None:
        """Read the ready sockets each time any is readable; never returns."""
        epoll = self._epoll
        consumers = self._consumers
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                for fd, _ in epoll.poll(0):
                    consumer = consumers.get(fd)
                    if consumer is None:
                        continue
                    try:
                        consumer.read_ready()
                    except Exception as exc:  # that consumer's failure, not the whole run's
                        consumer.end(exc)
                    if consumer.done.is_set():
                        self.remove(consumer)
        finally:
            epoll.close()


#: What ends a polled consumer early (counted as an error unless it was told to stop).
_ERRORS: tuple[type[Exception], ...] = (*CONSUMER_ERRORS, FrameError)

_POLLER: trio.lowlevel.RunVar[Poller] = trio.lowlevel.RunVar("loadtest.polled.poller")


def poller() -> Poller:
    """This trio run's poller, started (as a system task, which the run's end cancels) on
    first use."""
    try:
        return _POLLER.get()
    except LookupError:
        found = Poller()
        _POLLER.set(found)
        trio.lowlevel.spawn_system_task(found.run, name="loadtest.polled.Poller.run")
        return found


async def consume_polled(
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
    """Like :func:`~loadtest.lean.consume_lean`, read by this process's :class:`Poller`.

    Whatever came with the handshake's answer is read the lean way first, until wsproto
    holds no part of a frame; then the socket is the poller's. Leaves as the lean consumer
    does, with a close frame (1000) unless the server closed first.
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
    async with consuming(lean, recorder, stats, stopper, errors=_ERRORS):
        while not lean.holds_nothing():  # what came with the 101, read the lean way
            recorder.record(await lean.receive_messages(), time.monotonic_ns())
        sock, ws = lean.handover()
        consumer = PolledConsumer(sock, ws, recorder)
        reader = poller()
        try:
            reader.add(consumer)
            await consumer.done.wait()
        finally:
            reader.remove(consumer)
            sock.close()
            if consumer.dropped_replies:
                stats.note_error(f"consumer: {consumer.dropped_replies} control replies dropped")
        if consumer.error is not None and not stopper.stopped:
            # Whatever ended it (a close, a broken socket, a failure while reading it) is
            # this consumer's error, as with the lean client's own; the run goes on.
            stats.note_error(f"consumer: {consumer.error!r}")
