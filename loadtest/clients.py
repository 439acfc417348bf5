"""WebSocket clients for the load generator (the I/O layer), and what every client shares.

* :func:`consume` - a trio-websocket consumer that decodes the fixed message prefix and records
  latency from the scheduled send time.
* :func:`produce` - an open-loop producer on trio-websocket, with a drain task for echoes/acks.
* :class:`ProducerSlot`, :class:`ProducerPlan`, :class:`Stopper`, :class:`DeliveryCounter`,
  :class:`DeliveryRecorder`: how a run hands producers their schedule, records deliveries and
  stops consumers, whichever client they use.

The lean wsproto clients (the batched sender, the stalled consumer) are in
:mod:`loadtest.lean`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass, field

import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection

from loadtest.codec import CodecError, decode, encode
from loadtest.schedule import RateSchedule
from loadtest.stats import RoleStats
from triorelay.compat.trio_websocket import open_websocket_url

logger = logging.getLogger(__name__)

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
    ``headers`` on the handshake. Through the relay's wrapper of trio-websocket's client
    (``triorelay.compat.trio_websocket``): without it a silent server, or a reset meeting the
    close of a consumer that stopped reading, would hang the run."""
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


class DeliveryRecorder:
    """Records what one consumer receives: each message of this run (``run_id``) as a
    delivery, with its latency from the scheduled send time, in ``stats`` and ``counter``.

    Messages of another run are counted as ``foreign``, frames that are not load-test
    messages as ``bad_frames``; neither is a delivery. :attr:`delivered` counts this
    consumer's deliveries.
    """

    def __init__(self, run_id: str, stats: RoleStats, counter: DeliveryCounter) -> None:
        self._run_id = run_id
        self._stats = stats
        self._counter = counter
        self.delivered = 0

    def record(
        self, messages: Sequence[str | bytes], now_ns: int, acked_ns: int | None = None
    ) -> None:
        """Record ``messages``, all received at ``now_ns`` (``time.monotonic_ns``) and, by an
        acked consumer, acked at ``acked_ns`` (their ack latency from the scheduled time)."""
        stats = self._stats
        counters = stats.counters
        ledger = stats.ledger
        got = 0
        for text in messages:
            try:
                header = decode(text) if isinstance(text, str) else decode(text.decode())
            except (CodecError, UnicodeDecodeError):
                counters.bad_frames += 1
                continue
            if header.run != self._run_id:
                counters.foreign += 1
                continue
            stats.latency.record_ns(now_ns - header.scheduled_ns)
            if acked_ns is not None:
                stats.ack_latency.record_ns(acked_ns - header.scheduled_ns)
            if ledger is not None:
                ledger.record(header.producer, header.seq)
            got += 1
        if got:
            self.delivered += got
            counters.delivered += got
            stats.last_done_ns = max(stats.last_done_ns, now_ns if acked_ns is None else acked_ns)
            self._counter.add(got)


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
    says stop (:class:`DeliveryRecorder`).

    Reports ``task_status.started(True)`` once connected, or ``started(False)`` when the
    connection could not be made (counted in ``stats``). Errors after connecting are counted, not
    raised. Latency is receive time minus the message's scheduled time.
    """
    counters = stats.counters
    recorder = DeliveryRecorder(run_id, stats, counter)
    started = False
    try:
        async with open_client(url, connect_timeout_s, headers) as ws:
            counters.connected += 1
            started = True
            task_status.started(True)
            with stopper.scope():
                while True:
                    text = await ws.get_message()
                    recorder.record((text,), time.monotonic_ns())
    except CONNECTION_ERRORS as exc:
        if not started:
            counters.failed_connects += 1
            stats.note_error(f"consumer connect: {exc!r}")
            task_status.started(False)
        elif not stopper.stopped:
            stats.note_error(f"consumer: {exc!r}")
    finally:
        if started:
            stats.per_consumer_delivered.append(recorder.delivered)


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


async def wait_until_ns(due_ns: int) -> None:
    delay = due_ns - time.monotonic_ns()
    if delay > 0:
        await trio.sleep(delay / 1e9)


@dataclass(frozen=True)
class ProducerSlot:
    """One producer of a run, for any producer client (:func:`produce`, the lean ones).

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


async def stop_sending(plan: ProducerPlan, unacked: Callable[[], bool], acked: trio.Event) -> None:
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
                        await wait_until_ns(due)
                        await ws.send_message(encode(plan.run, plan.index, n, due, plan.padding))
                        sent += 1
                        counters.sent += 1
                        stats.sent_per_producer[plan.index] = sent
                sending_done = True
                await stop_sending(plan, lambda: acked < sent, all_acked)
                nursery.cancel_scope.cancel()
    except CONNECTION_ERRORS as exc:
        if not started:
            counters.failed_connects += 1
            stats.note_error(f"producer connect: {exc!r}")
            task_status.started(False)
        else:
            stats.note_error(f"producer: {exc!r}")
