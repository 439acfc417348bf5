"""The unbatched sender: one frame per write at each message's own time, acks, pings, closes.

The thread's connection runs over a real socket pair with a wsproto server on the other end
(fed synchronously); the pacing loop runs on a fake clock.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    Ping,
    Pong,
    Request,
    TextMessage,
)

from loadtest.clients import ProducerPlan
from loadtest.codec import decode
from loadtest.lean import LeanClosedError
from loadtest.schedule import RateSchedule
from loadtest.unbatched import ACK_READ_INTERVAL_NS, SendOutcome, ThreadConnection, send_paced

pytestmark = pytest.mark.timeout(10)


class CountingSocket(socket.socket):
    """A socket that counts its ``send`` calls (one per write the kernel sees)."""

    sends: list[int]

    def send(self, data: object, flags: int = 0) -> int:  # type: ignore[override]
        sent = super().send(data, flags)  # type: ignore[call-overload]
        self.sends.append(sent)
        return int(sent)


@dataclass
class Pair:
    """A client connection owned by a :class:`ThreadConnection`, and the raw server end."""

    conn: ThreadConnection
    client_socket: CountingSocket
    server_socket: socket.socket
    server: WSConnection

    def server_events(self) -> list[object]:
        """Read what the client wrote so far and return the server's events."""
        self.server_socket.setblocking(False)
        try:
            while data := self.server_socket.recv(65536):
                self.server.receive_data(data)
        except BlockingIOError:
            pass
        return list(self.server.events())

    def server_send(self, *events: object) -> None:
        """Write the frames of ``events`` from the server end."""
        self.server_socket.sendall(b"".join(self.server.send(e) for e in events))  # type: ignore[arg-type]


@pytest.fixture
def pair() -> Iterator[Pair]:
    """An open WebSocket connection (handshake done in memory) over a socket pair."""
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="relay", target="/ws/producer")))
    assert isinstance(next(server.events()), Request)
    client.receive_data(server.send(AcceptConnection()))
    assert isinstance(next(client.events()), AcceptConnection)
    a, b = socket.socketpair()
    counting = CountingSocket(fileno=os.dup(a.fileno()))
    a.close()
    counting.sends = []
    try:
        yield Pair(ThreadConnection(counting, client), counting, b, server)
    finally:
        counting.close()
        b.close()


def test_each_text_is_one_frame_in_one_send(pair: Pair) -> None:
    """Three messages are three writes, each one whole frame."""
    for text in ("a", "bb", "ccc"):
        pair.conn.send_text(text)
    assert len(pair.client_socket.sends) == 3
    texts = [e.data for e in pair.server_events() if isinstance(e, TextMessage)]
    assert texts == ["a", "bb", "ccc"]


def test_acks_are_counted_and_pings_answered(pair: Pair) -> None:
    """Whatever has arrived is read without waiting: two acks counted, the ping answered."""
    pair.server_send(Message(data="ack1"), Ping(b"p"), Message(data="ack2"))
    pair.conn.read_ready()
    assert pair.conn.received == 2
    assert [e.payload for e in pair.server_events() if isinstance(e, Pong)] == [b"p"]
    pair.conn.read_ready()  # nothing more: returns at once
    assert pair.conn.received == 2


def test_a_close_is_answered_and_raised(pair: Pair) -> None:
    """The server's close comes back as LeanClosedError with its code, after an answer."""
    pair.server_send(CloseConnection(code=1013, reason="slow"))
    with pytest.raises(LeanClosedError) as caught:
        pair.conn.read_ready()
    assert (caught.value.code, caught.value.reason) == (1013, "slow")
    assert any(isinstance(e, CloseConnection) for e in pair.server_events())


def test_wait_input_returns_at_the_deadline_without_input(pair: Pair) -> None:
    """No input: the wait ends (the deadline is in the past) and nothing is counted."""
    pair.conn.wait_input(0)
    assert pair.conn.received == 0


@dataclass
class FakeConnection:
    """Records when each text was sent; acks arrive on ``read_ready``/``wait_input``."""

    clock: list[int]
    sent_at: list[tuple[int, str]] = field(default_factory=list)
    received: int = 0
    reads: int = 0
    ack_on_wait: bool = True
    fail_after: int | None = None

    def send_text(self, text: str) -> None:
        if self.fail_after is not None and len(self.sent_at) >= self.fail_after:
            raise BrokenPipeError("gone")
        self.sent_at.append((self.clock[0], text))

    def read_ready(self) -> None:
        self.reads += 1

    def wait_input(self, deadline_ns: int) -> None:
        if self.ack_on_wait:
            self.received = len(self.sent_at)
        else:
            self.clock[0] = deadline_ns


def _run(
    schedule: RateSchedule, plan: ProducerPlan, conn: FakeConnection
) -> tuple[SendOutcome, list[int]]:
    clock = conn.clock
    done_at: list[int] = []

    def sleep(seconds: float) -> None:
        clock[0] += round(seconds * 1e9)

    outcome = send_paced(
        conn,  # type: ignore[arg-type]
        schedule,
        plan,
        lambda: done_at.append(clock[0]),
        clock_ns=lambda: clock[0],
        sleep_s=sleep,
    )
    return outcome, done_at


def _plan(*, cutoff_ns: int = 10**12, drain_ns: int = 2 * 10**12) -> ProducerPlan:
    return ProducerPlan("0badcafe", 3, "", send_cutoff_ns=cutoff_ns, drain_deadline_ns=drain_ns)


def test_every_message_is_sent_alone_at_its_own_due_time() -> None:
    """Paced per message: each send happens at the message's scheduled time, stamped with it."""
    schedule = RateSchedule(start_ns=1_000, interval_ns=200_000, count=5)
    conn = FakeConnection(clock=[0])
    outcome, done_at = _run(schedule, _plan(), conn)
    due = [schedule.send_time_ns(n) for n in range(5)]
    assert [at for at, _ in conn.sent_at] == due
    assert [decode(text).scheduled_ns for _, text in conn.sent_at] == due
    assert [decode(text).seq for _, text in conn.sent_at] == list(range(5))
    assert outcome == SendOutcome(sent=5, acks=5)
    assert done_at == [due[-1]]


def test_late_messages_are_still_written_one_by_one() -> None:
    """A sender that wakes late writes each overdue message in its own send, no batching."""
    schedule = RateSchedule(start_ns=0, interval_ns=10, count=4)
    conn = FakeConnection(clock=[1_000])  # every message already due
    outcome, _ = _run(schedule, _plan(), conn)
    assert [decode(text).seq for _, text in conn.sent_at] == [0, 1, 2, 3]
    assert outcome.sent == 4


def test_acks_are_read_at_most_once_per_interval_while_sending() -> None:
    """At 10 messages per read interval, acks are read about once per ten messages."""
    schedule = RateSchedule(start_ns=0, interval_ns=ACK_READ_INTERVAL_NS // 10, count=100)
    conn = FakeConnection(clock=[0])
    _run(schedule, _plan(), conn)
    assert 9 <= conn.reads <= 10


def test_the_cutoff_stops_sending_and_the_drain_deadline_stops_waiting() -> None:
    """Messages due after the cutoff are not sent; without acks the wait ends at the deadline."""
    schedule = RateSchedule(start_ns=0, interval_ns=100, count=10)
    conn = FakeConnection(clock=[0], ack_on_wait=False)
    outcome, done_at = _run(schedule, _plan(cutoff_ns=450, drain_ns=5_000), conn)
    assert outcome == SendOutcome(sent=5, acks=0)
    assert done_at == [450]
    assert conn.clock[0] == 5_000


def test_a_broken_connection_ends_the_run_and_is_reported() -> None:
    """An OSError while sending is returned, with what was sent before it."""
    schedule = RateSchedule(start_ns=0, interval_ns=100, count=10)
    conn = FakeConnection(clock=[0], fail_after=3)
    outcome, done_at = _run(schedule, _plan(), conn)
    assert outcome.sent == 3
    assert outcome.error is not None
    assert "BrokenPipeError" in outcome.error
    assert done_at == []


async def test_a_lean_consumer_leaving_a_connection_not_open_sends_nothing() -> None:
    """A close handshake already over (the server closed first, wsproto CLOSED) or never
    begun: leaving sends no close frame (wsproto would refuse one), it only closes."""
    from wsproto import ConnectionType, WSConnection

    from loadtest.lean import LeanWebSocket

    class Recording:
        def __init__(self) -> None:
            self.sent: list[bytes] = []

        async def send_all(self, data: bytes) -> None:
            self.sent.append(data)

    stream = Recording()
    lean = LeanWebSocket(stream, WSConnection(ConnectionType.CLIENT))  # type: ignore[arg-type]
    await lean.send_close()
    assert stream.sent == []
