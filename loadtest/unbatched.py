"""The unbatched sender: one message per write, each written at its own scheduled time.

Real producers (a browser tab, a device, a service emitting events) write one message per
segment, and many producers at a few messages per second each never batch at all. The lean
batched sender (:func:`loadtest.lean.produce_lean`) writes every message due in a 1 ms
tick in one ``send_all``, which lets a server amortize its reads; this one does not.

Why a thread: trio's sleeps wake at whole milliseconds at best (its ``epoll`` timeout is in
milliseconds), so a trio task pacing 5,000 msg/s would wake once per millisecond and write the
five messages then due back to back. Instead, once its WebSocket handshake is done (in trio,
by :meth:`~loadtest.lean.LeanWebSocket.open`), each unbatched producer hands its
connection over (:meth:`~loadtest.lean.LeanWebSocket.handover`) to an OS thread of its own
that sleeps with ``time.sleep`` (nanosecond resolution; see :func:`precise_sleeps`) until each
message is due and writes it with one ``send`` of one frame. The same thread reads the
acks (echoes or ``{"id": N}``) and answers pings; nothing else touches the socket meanwhile.

A producer that falls behind its schedule still writes each late message in its own ``send``
(never coalescing them): latency counts from the scheduled time, so the lateness shows.

Run unbatched producers in a worker process (``--producer-procs N``) when consumers share the
process: a thread that wakes while the trio thread is busy waits for the GIL (up to the
interpreter's switch interval, 5 ms by default), which would show up as latency.
"""

from __future__ import annotations

import ctypes
import functools
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import trio
from wsproto import WSConnection
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage

from loadtest.clients import ProducerPlan, ProducerSlot
from loadtest.codec import encode
from loadtest.lean import (
    RECEIVE_BYTES,
    LeanClosedError,
    open_counted,
)
from loadtest.schedule import RateSchedule

#: Longest single wait (ms) of the thread on its socket, while draining acks or while the
#: kernel's send buffer is full: it looks at its deadlines at least this often.
POLL_SLICE_MS: Final = 50
#: While sending, the thread reads acks at most this often (one ``recv`` for all that came,
#: instead of one per message; the kernel holds them meanwhile).
ACK_READ_INTERVAL_NS: Final = 1_000_000
#: Linux ``prctl`` option, and the timer slack the sending thread asks for: ``time.sleep``
#: then ends within about 20 us of the due time on an idle core instead of about 70 us.
PR_SET_TIMERSLACK: Final = 29
TIMER_SLACK_NS: Final = 1_000


@dataclass
class SendOutcome:
    """What one unbatched producer's thread did: messages sent, acks received, and the
    connection failure that ended it early (``None``: none)."""

    sent: int = 0
    acks: int = 0
    error: str | None = None


class ThreadConnection:
    """A client WebSocket connection owned by one OS thread: a non-blocking socket and its
    wsproto state, driven synchronously.

    :meth:`send_text` writes one frame, in one ``send`` unless the kernel takes only part of
    it; :meth:`read_ready` processes whatever has arrived without waiting; :meth:`wait_input`
    waits for input (milliseconds at most :data:`POLL_SLICE_MS`). Pings are answered and a
    close is answered, then raised as :class:`~loadtest.clients.LeanClosedError`. A broken
    connection raises ``OSError``. Not thread-safe: one thread owns it.
    """

    def __init__(self, sock: socket.socket, ws: WSConnection) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._ws = ws
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        # Bytes still to write: the rest of a frame the kernel took only part of, and the
        # replies (pongs, the close answer) queued behind it, so no write splits a frame.
        self._outbox = bytearray()
        #: Whole messages received (acks).
        self.received = 0

    def send_text(self, text: str) -> None:
        """Write ``text`` as one frame; block (reading meanwhile) while the kernel is full."""
        self._outbox += self._ws.send(Message(data=text))
        self._flush()

    def read_ready(self) -> None:
        """Process every byte already received, without waiting."""
        while True:
            try:
                data = self._sock.recv(RECEIVE_BYTES)
            except BlockingIOError:
                return
            self._process(data)

    def wait_input(self, deadline_ns: int) -> None:
        """Wait for input until ``deadline_ns`` (``time.monotonic_ns``), at most
        :data:`POLL_SLICE_MS`, then process what came."""
        timeout_ms = min(POLL_SLICE_MS, max(0, -(-(deadline_ns - time.monotonic_ns()) // 10**6)))
        if self._poll.poll(timeout_ms):
            self.read_ready()

    def _flush(self) -> None:
        while self._outbox:
            try:
                sent = self._sock.send(self._outbox)
            except BlockingIOError:
                # The server is not reading: wait for room, reading its acks meanwhile (it may
                # be blocked writing them to us).
                self._poll.modify(self._sock, select.POLLIN | select.POLLOUT)
                try:
                    for _fd, flags in self._poll.poll(POLL_SLICE_MS):
                        if flags & (select.POLLIN | select.POLLHUP | select.POLLERR):
                            self.read_ready()
                finally:
                    self._poll.modify(self._sock, select.POLLIN)
                continue
            del self._outbox[:sent]

    def _process(self, data: bytes) -> None:
        ws = self._ws
        ws.receive_data(data or None)
        closed: LeanClosedError | None = None
        for event in ws.events():
            if isinstance(event, TextMessage | BytesMessage):
                if event.message_finished:
                    self.received += 1
            elif isinstance(event, Ping):
                self._outbox += ws.send(event.response())
            elif isinstance(event, CloseConnection):
                if ws.state.name == "REMOTE_CLOSING":
                    self._outbox += ws.send(event.response())
                closed = LeanClosedError(event.code, event.reason or "")
                break
        if self._outbox:
            self._flush()
        if closed is not None:
            raise closed
        if not data:
            raise LeanClosedError(None, "the server ended the connection without a close")


def send_paced(
    conn: ThreadConnection,
    schedule: RateSchedule,
    plan: ProducerPlan,
    on_sending_done: Callable[[], None],
    *,
    clock_ns: Callable[[], int] = time.monotonic_ns,
    sleep_s: Callable[[float], None] = time.sleep,
) -> SendOutcome:
    """Send every message of ``schedule`` at its due time, one frame per write, then wait for
    the acks; runs in the thread that owns ``conn``.

    While sending, acks are read at most once per :data:`ACK_READ_INTERVAL_NS` (they wait in
    the kernel meanwhile; the server does not notice). Sending stops at
    ``plan.send_cutoff_ns`` (the rest stays offered, unsent); then ``on_sending_done()`` is
    called, and with ``plan.expect_acks`` the thread waits until every sent message is acked
    or ``plan.drain_deadline_ns``. A connection failure ends it early and is returned in
    :attr:`SendOutcome.error`, not raised.
    """
    out = SendOutcome()
    try:
        n = 0
        last_read_ns = clock_ns()
        while n < schedule.count:
            due = schedule.send_time_ns(n)
            now = clock_ns()
            if now >= plan.send_cutoff_ns:
                break
            if now < due:
                sleep_s((min(due, plan.send_cutoff_ns) - now) / 1e9)
                continue
            if now - last_read_ns >= ACK_READ_INTERVAL_NS:
                conn.read_ready()
                last_read_ns = now
            conn.send_text(encode(plan.run, plan.index, n, due, plan.padding))
            n += 1
            out.sent = n
        on_sending_done()
        while plan.expect_acks and conn.received < out.sent:
            if clock_ns() >= plan.drain_deadline_ns:
                break
            conn.wait_input(plan.drain_deadline_ns)
    except (OSError, LeanClosedError) as exc:
        out.error = repr(exc)
    out.acks = conn.received
    return out


def precise_sleeps() -> None:
    """Make this thread's sleeps end closer to their deadlines (Linux: 1 us of timer slack
    instead of 50 us); does nothing where that cannot be set."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_TIMERSLACK, TIMER_SLACK_NS, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _paced_thread(
    conn: ThreadConnection,
    schedule: RateSchedule,
    plan: ProducerPlan,
    on_sending_done: Callable[[], None],
) -> SendOutcome:
    precise_sleeps()
    return send_paced(conn, schedule, plan, on_sending_done)


def _in_trio(fn: Callable[[], None]) -> Callable[[], None]:
    """``fn`` made callable from a thread started by ``trio.to_thread``: it runs in trio's."""
    return functools.partial(trio.from_thread.run_sync, fn)


async def produce_unbatched(
    slot: ProducerSlot, *, task_status: trio.TaskStatus[bool] = trio.TASK_STATUS_IGNORED
) -> None:
    """Like :func:`loadtest.clients.produce`, but every message is written on its own, at its
    own time, by a thread that owns the connection (see the module docstring).

    ``started(True/False)`` reports whether the connection was made. Cancelling it waits for
    the thread, which ends at the plan's drain deadline at the latest.
    """
    stats = slot.stats
    counters = stats.counters
    lean = await open_counted(
        slot.url,
        connect_timeout_s=slot.connect_timeout_s,
        headers=slot.headers,
        stats=stats,
        what="unbatched producer",
        task_status=task_status,
    )
    if lean is None:
        return
    try:
        schedule, plan = await slot.wait_for_start()
        sock, ws = lean.handover()
        with sock:
            outcome = await trio.to_thread.run_sync(
                functools.partial(
                    _paced_thread,
                    ThreadConnection(sock, ws),
                    schedule,
                    plan,
                    _in_trio(plan.on_sending_done),
                ),
                # A limiter of its own: trio's default one (40 threads) would hold back the
                # producers past the 40th until the first ones finish.
                limiter=trio.CapacityLimiter(1),
            )
        counters.sent += outcome.sent
        counters.acks += outcome.acks
        stats.sent_per_producer[plan.index] = outcome.sent
        if outcome.error is not None:
            stats.note_error(f"unbatched producer: {outcome.error}")
    finally:
        await lean.aclose()
