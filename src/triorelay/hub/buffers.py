"""Where a channel's messages wait for their consumers. No I/O.

Three kinds of :class:`Inbox`, one per way a consumer gets messages:

- :class:`ConsumerBuffer`: a broadcast consumer's own bounded buffer. The channel
  :meth:`~ConsumerBuffer.offer`\\ s each message; the slow-consumer policy decides what
  happens when it is full.
- :class:`QueueReader`: a queue consumer's view of its channel's shared :class:`LocalQueue`
  (memory broker); each message goes to exactly one reader.
- :class:`SourceReader`: a queue consumer fed one message at a time by a broker-held queue
  (Redis); nothing is buffered here.

Each buffer keeps the channel's :class:`Occupancy` (messages buffered, and the peak) itself,
in the one place it changes, so the channel reads a total that cannot drift.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol, cast

import trio

from triorelay.brokers.base import QueueSource
from triorelay.envelopes import Payload, size_of
from triorelay.errors import QueueFull
from triorelay.framing import encode_message
from triorelay.tracing import Trace, now_ns


class Entry:
    """A broadcast message with its position, for the consumers that are told positions
    (the ``triorelay.v1`` framing, event streams): one per message, shared by all of them,
    encoded for the framing at most once (:meth:`frame`)."""

    __slots__ = ("_frame", "epoch", "offset", "payload", "size")

    def __init__(self, payload: Payload, size: int, offset: int, epoch: str) -> None:
        self.payload = payload
        self.size = size
        self.offset = offset
        self.epoch = epoch
        self._frame: Payload | None = None

    def frame(self, channel: str) -> Payload:
        """The message as a ``triorelay.v1`` message frame on ``channel``."""
        frame = self._frame
        if frame is None:
            frame = self._frame = encode_message(channel, self.offset, self.payload)
        return frame


class Traced(Entry):
    """A traced broadcast message (:mod:`triorelay.tracing`): what every consumer gets in its
    buffer, raw or positioned, so that its writer can time the last two stages."""

    __slots__ = ("logged", "trace")

    def __init__(self, payload: Payload, size: int, offset: int, epoch: str, trace: Trace) -> None:
        super().__init__(payload, size, offset, epoch)
        self.trace = trace
        #: Its trace was logged (once per relay, by the first consumer to write it).
        self.logged = False


class Unfinished:
    """The rest of a message frame a direct write began (the socket took only part of it).

    The message was handed to the socket: it is counted as written, and it is not a buffered
    message. Its writer must write the rest before anything else; every other writer of that
    connection waits meanwhile (the I/O layer keeps its send lock taken for the rest).
    """

    __slots__ = ("rest",)

    def __init__(self, rest: bytes) -> None:
        self.rest = rest


Item = Payload | Entry | Unfinished
"""What a consumer's inbox holds: a message (and, with notices, a notice), or for a
positioned consumer an :class:`Entry` (notices stay text); and, first, the rest of a message a
direct write began (:class:`Unfinished`, raw broadcast consumers only)."""

WriteNow = Callable[[Payload], bool | bytes]
"""``write(payload)``: a consumer's socket taking one message at once, in the publishing task,
while its writer waits with nothing buffered (:meth:`ConsumerBuffer.write_directly`). Returns
True once the message is on the socket; False, having written nothing, when it cannot (then
the message is buffered as usual); or, when the socket took only part of its frame, the rest
of it (see :class:`Unfinished`)."""

WriteManyNow = Callable[[list[Payload]], bool | bytes]
"""``write_many(payloads)``: :data:`WriteNow` for the messages of a batch, in one socket
write."""


class Written(Protocol):
    """What counts the messages a direct write puts on a socket: the consumer, and its
    channel's counters (as its writer counts what it takes)."""

    messages_out: int
    bytes_out: int


TracedWritten = Callable[[Trace, int, int], None]
"""``traced_written(trace, taken_ns, written_ns)``: a sampled message (traced for the latency
histograms only) went out by a direct write: its last two stages, timed there."""


class _Tally:
    """A :class:`Written` nobody reads: where a buffer without direct writes points."""

    __slots__ = ("bytes_out", "messages_out")

    def __init__(self) -> None:
        self.messages_out = self.bytes_out = 0


_NOT_COUNTED = _Tally()


class Occupancy:
    """How many messages a channel's buffers hold, and the most they held at once."""

    __slots__ = ("messages", "peak")

    def __init__(self) -> None:
        self.messages = 0
        self.peak = 0

    def add(self) -> None:
        self.messages += 1
        if self.messages > self.peak:
            self.peak = self.messages

    def remove(self, count: int = 1) -> None:
        self.messages -= count


class Inbox(Protocol):
    """What a consumer reads its messages from."""

    #: The size of the message last received (measured once, here).
    last_size: int

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called: the stream has ended."""
        ...

    async def receive(self) -> Item:
        """The next message; raises :class:`trio.EndOfChannel` once closed."""
        ...

    def receive_nowait(self) -> Item:
        """The next message if one is ready, else :class:`trio.WouldBlock`; ended:
        :class:`trio.EndOfChannel`."""
        ...

    def requeue(self, payload: Payload) -> bool:
        """Give back a message taken but not delivered; False if it could not be kept."""
        ...

    async def acknowledge(self) -> None:
        """The message last received is on the consumer's socket."""
        ...

    def close(self) -> int:
        """End the stream; return how many messages it still held for this consumer."""
        ...


class _MemoryInbox:
    """An inbox over a trio memory channel: receiving, and its end once closed."""

    __slots__ = ("_closed", "_receive", "last_size")

    _receive: trio.MemoryReceiveChannel[Item]
    _closed: bool
    #: The size of the message last received (so that it is measured once).
    last_size: int

    @property
    def closed(self) -> bool:
        return self._closed

    async def receive(self) -> Item:
        try:
            payload = await self._receive.receive()
        except trio.ClosedResourceError:
            raise trio.EndOfChannel from None
        self._taken(payload)
        return payload

    def receive_nowait(self) -> Item:
        try:
            payload = self._receive.receive_nowait()
        except trio.ClosedResourceError:
            raise trio.EndOfChannel from None
        self._taken(payload)
        return payload

    def _taken(self, payload: Item) -> None:
        """Account for ``payload`` leaving the inbox."""
        raise NotImplementedError


class ConsumerBuffer:
    """A broadcast consumer's buffer: at most ``max_messages`` messages and ``max_bytes``.

    A message larger than ``max_bytes`` still fits into an empty buffer (it is within
    ``max_message_bytes``, or it would not have been accepted). ``messages`` and ``bytes`` are
    what it holds now; ``peak`` the most messages it held. One task reads it (the consumer's
    writer); while it waits, the first message offered is handed to it and does not take one
    of the ``max_messages`` places (as with a trio memory channel of that size).

    **Direct writes.** A writer that can write to its socket without waiting registers that
    write (:meth:`write_directly`). While it waits in :meth:`receive` with nothing buffered
    and nothing being written, a raw message offered goes to that write at once, in the
    publishing task: no task is woken and nothing is buffered. So does a message sampled for
    the latency histograms (a :class:`Traced` item without a trace id, outside a batch),
    its last two stages timed around the write (``traced_written``) as its writer would.
    Anything else (the write cannot take it, an :class:`Entry`, a message traced for its
    producer) is buffered and wakes the writer, which then owns the order: until it waits
    again, every message is buffered behind that one. So a consumer gets its messages in
    order and each once, whichever way each went.
    A direct write the socket took only part of leaves an :class:`Unfinished` rest, which
    :meth:`receive` returns before anything buffered after it. The messages of a batch (one
    producer read, :meth:`offer` with ``batch``) are held instead, the writer still waiting,
    and written in one direct write at the batch's end (:meth:`flush_batch`); anything else
    offered meanwhile goes behind them and wakes the writer, which then writes them all.
    """

    __slots__ = (
        "_channel_written",
        "_closed",
        "_consumer_written",
        "_deferred",
        "_direct",
        "_direct_many",
        "_handed",
        "_items",
        "_occupancy",
        "_room",
        "_traced_written",
        "_unfinished",
        "_waiter",
        "bytes",
        "direct_now",
        "last_size",
        "max_bytes",
        "max_messages",
        "messages",
        "peak",
        "traced",
    )

    def __init__(self, max_messages: int, max_bytes: int, occupancy: Occupancy) -> None:
        # Made on first use: a consumer that keeps up gets its messages directly and never
        # buffers one (an empty deque is 600 bytes per idle connection).
        self._items: deque[Item] | None = None
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._occupancy = occupancy
        # Where a ``block`` publisher waits for room: made on first use (only ``block`` needs
        # it, and an idle connection should cost as little as possible).
        self._room: trio.lowlevel.ParkingLot | None = None
        #: The reader, while it waits in receive() with nothing to take.
        self._waiter: trio.lowlevel.Task | None = None
        #: The head of ``_items`` was handed to the waiter, which has not run yet.
        self._handed = False
        self._direct: WriteNow | None = None
        #: The direct write while it may take a raw message now (the reader waits with nothing
        #: buffered, held or being written, and the buffer is open), else None: one read for
        #: the channel's loop (Channel._deliver_nowait) and for offer. Kept true to that state
        #: at each change of it (_direct_if_waiting).
        self.direct_now: WriteNow | None = None
        self._direct_many: WriteManyNow | None = None
        self._traced_written: TracedWritten | None = None
        #: Where a direct write counts what it put on the socket (set with _direct).
        self._consumer_written: Written = _NOT_COUNTED
        self._channel_written: Written = _NOT_COUNTED
        #: Messages are held for one write at the end of a batch (flush_batch).
        self._deferred = False
        self._unfinished: Unfinished | None = None
        self.messages = 0
        self.bytes = 0
        self.peak = 0
        self._closed = False
        #: The size of the message last received (so that it is measured once).
        self.last_size = 0
        #: Traced messages buffered (their writer unwraps them).
        self.traced = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def write_directly(
        self,
        write: WriteNow | None,
        write_many: WriteManyNow | None = None,
        traced_written: TracedWritten | None = None,
        counted: tuple[Written, Written] | None = None,
    ) -> None:
        """Hand offered messages to ``write`` while the reader waits with nothing buffered (see
        the class's docstring), and a batch's to ``write_many`` at its end; sampled messages
        too if ``traced_written`` times them. Each message written so is counted, as it goes
        out, in both of ``counted`` (the consumer, its channel's counters). ``None`` stops it.
        The reader's own task sets it, before it first waits, and clears it when it stops
        reading."""
        self._direct = write
        self._direct_many = write_many
        self._traced_written = traced_written
        consumer, channel = counted if counted is not None else (_NOT_COUNTED, _NOT_COUNTED)
        self._consumer_written, self._channel_written = consumer, channel
        self._direct_if_waiting()

    def _direct_if_waiting(self) -> None:
        """Set :attr:`direct_now` from the state (see its comment in ``__init__``)."""
        waiting = self._waiter is not None and not self._deferred and not self._closed
        self.direct_now = self._direct if waiting else None

    def has_room(self, size: int) -> bool:
        """Whether a message of ``size`` bytes would fit now."""
        if self.bytes + size > self.max_bytes and self.messages:
            return False
        return self.messages < self.max_messages

    def offer(self, payload: Item, size: int, batch: list[ConsumerBuffer] | None = None) -> bool:
        """Buffer ``payload`` (of ``size``) if there is room, or write it directly (see the
        class's docstring); False, and nothing changes, if neither. Never waits.

        ``batch``: the message is one of several delivered in a row (see
        :meth:`flush_batch`); a waiting writer's messages are then held for one write at the
        batch's end, and this buffer joins ``batch`` once.
        """
        write = self.direct_now
        if write is not None and batch is None:
            kind = type(payload)
            if kind is str or kind is bytes:
                # The common case, first: a raw message, the reader waiting and nothing
                # buffered or being written: it goes straight to the socket.
                written = write(payload)  # type: ignore[arg-type]
                if written is True:
                    self._count_written(1, size)
                else:
                    self.settle_direct(payload, size, written)  # type: ignore[arg-type]
                return True
        if self._closed:
            return False
        waiter = self._waiter
        if waiter is None:
            return self._append(payload, size)
        kind = type(payload)
        raw = kind is str or kind is bytes
        if self._deferred:
            # Messages held for one write at the end of a batch.
            if raw and batch is not None:
                return self._append(payload, size)
            # Anything else (a notice from outside the batch, a traced item) goes behind
            # them, and the writer writes them all: no direct write past what is held.
            self._deferred = False
            self._handed = True  # (already: the held head is the woken writer's)
            appended = self._append(payload, size)
            self._wake(waiter)
            return appended
        # A sample for the histograms may go straight to the socket too (its two stages
        # timed here), and a batch's raw messages are held for one write at its end. An
        # Entry or a message traced for its producer has the writer's work to do (positions,
        # notices, the trace log), so it goes to the writer.
        write = self._direct
        if write is not None and kind is Traced and batch is None:
            sampled = cast(Traced, payload)
            trace = sampled.trace
            traced_written = self._traced_written
            if trace.trace_id is None and traced_written is not None:
                taken_ns = now_ns()
                written = write(sampled.payload)
                if written is not False:
                    traced_written(trace, taken_ns, now_ns())
                    self._count_written(1, size)
                    if written is not True:
                        self._leave_rest(written, waiter)
                    return True
        elif raw and batch is not None and write is not None and self._direct_many is not None:
            self._append(payload, size)  # the buffer is empty: it fits
            # The head of what is held is the waiting writer's, as when it is woken with it:
            # it takes none of the max_messages places, and no policy drops it.
            self._handed = True
            self._deferred = True
            self.direct_now = None
            batch.append(self)
            return True
        self._append(payload, size)  # the buffer is empty: it fits
        self._handed = True
        self._wake(waiter)
        return True

    def settle_direct(self, payload: Payload, size: int, written: bool | bytes) -> None:
        """What :attr:`direct_now` returned for ``payload`` (of ``size``) when not True: False,
        nothing went out, so it is buffered and the writer woken (the buffer is empty: it
        fits); a rest, the socket took part of it, so it is counted as written and the rest
        goes to the writer (:class:`Unfinished`). A caller that gets True counts it itself."""
        waiter = self._waiter
        assert waiter is not None  # direct_now is None unless the reader waits
        if written is False:
            self._append(payload, size)
            self._handed = True
            self._wake(waiter)
        else:
            self._count_written(1, size)
            self._leave_rest(written, waiter)  # type: ignore[arg-type]

    def _count_written(self, count: int, size: int) -> None:
        """``count`` messages of ``size`` bytes in all went out by a direct write."""
        consumer = self._consumer_written
        consumer.messages_out += count
        consumer.bytes_out += size
        channel = self._channel_written
        channel.messages_out += count
        channel.bytes_out += size

    def flush_batch(self) -> None:
        """The end of the batch this buffer joined in :meth:`offer`: write what it held for the
        batch in one direct write if the socket takes it at once (or part of it: the rest then
        goes to the writer as an :class:`Unfinished`), else wake the writer to write it."""
        if not self._deferred:
            return  # ended meanwhile (the writer was woken, or the buffer closed)
        self._deferred = False
        waiter, items, write_many = self._waiter, self._items, self._direct_many
        if waiter is None or not items or write_many is None:  # pragma: no cover - defensive
            return  # the writer stopped waiting (cancelled): it finds them when it reads
        payloads = list(items)  # raw messages only (see offer)
        written = write_many(payloads)  # type: ignore[arg-type]
        if written is False:
            self._handed = True
            self._wake(waiter)
            return
        self._count_written(len(payloads), self.bytes)
        # On the socket, whole or begun: none of them is buffered any more.
        occupancy = self._occupancy
        occupancy.messages -= self.messages
        self.messages = self.bytes = 0
        items.clear()
        self._handed = False
        if self._room:
            self._room.unpark_all()
        if written is not True:
            self._leave_rest(written, waiter)
        else:
            self._direct_if_waiting()  # the writer still waits, with nothing held any more

    def _leave_rest(self, rest: bytes, waiter: trio.lowlevel.Task) -> None:
        """A direct write the socket took only part of: ``rest`` goes to the writer, which
        is woken to write it before anything else."""
        self._unfinished = Unfinished(rest)
        self._wake(waiter)

    def _append(self, payload: Item, size: int) -> bool:
        """Buffer ``payload`` if there is room (the one message handed to a woken writer takes
        none of the ``max_messages`` places); False if not."""
        if self.messages - self._handed >= self.max_messages:
            return False
        if self.bytes + size > self.max_bytes and self.messages:
            return False
        items = self._items
        if items is None:
            items = self._items = deque()
        items.append(payload)
        if type(payload) is Traced:
            self.traced += 1
        self.bytes += size
        self.messages += 1
        if self.messages > self.peak:
            self.peak = self.messages
        occupancy = self._occupancy  # Occupancy.add, inlined: this runs per message
        occupancy.messages += 1
        if occupancy.messages > occupancy.peak:
            occupancy.peak = occupancy.messages
        return True

    def _wake(self, waiter: trio.lowlevel.Task) -> None:
        self._waiter = None
        self.direct_now = None
        trio.lowlevel.reschedule(waiter)

    def drop_oldest(self) -> bool:
        """Discard the oldest buffered message (not one already handed to the reader); False
        if there was none."""
        items = self._items
        if items is None or len(items) <= self._handed:
            return False
        if self._handed:
            payload = items[1]
            del items[1]
        else:
            payload = items.popleft()
        # Not through last_size: that is the size of the item last received, which its
        # writer reads after the checkpoint in receive (a drop may come in between).
        self._taken(payload)
        if type(payload) is Traced:
            self.traced -= 1
        return True

    async def receive(self) -> Item:
        """The next item: an :class:`Unfinished` rest first, then the buffered messages in
        order; waits while there is none. Raises :class:`trio.EndOfChannel` once closed (an
        unfinished rest is still returned first), :class:`trio.BusyResourceError` if another
        task is already waiting."""
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            item = self.receive_nowait()
        except trio.WouldBlock:
            pass
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return item
        while True:
            if self._waiter is not None:
                raise trio.BusyResourceError("another task is receiving from this buffer")
            task = self._waiter = trio.lowlevel.current_task()
            self._direct_if_waiting()

            def abort(_: object, task: trio.lowlevel.Task = task) -> trio.lowlevel.Abort:
                if self._waiter is task:
                    self._waiter = None
                    self.direct_now = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
            try:
                return self.receive_nowait()
            except trio.WouldBlock:  # pragma: no cover - woken only with something to take
                continue

    def receive_nowait(self) -> Item:
        """The next item if there is one (see :meth:`receive`), else :class:`trio.WouldBlock`;
        closed: :class:`trio.EndOfChannel`."""
        unfinished = self._unfinished
        if unfinished is not None:
            self._unfinished = None
            return unfinished
        items = self._items
        if items:
            payload = items.popleft()
            self._handed = False
            self.last_size = self._taken(payload)
            return payload
        if self._closed:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    def take_unfinished(self) -> Unfinished | None:
        """The :class:`Unfinished` rest not yet received, if any (for a writer that stops)."""
        unfinished, self._unfinished = self._unfinished, None
        return unfinished

    async def wait_for_room(self) -> None:
        """Wait until a message is taken out (or the buffer closes)."""
        if self._room is None:
            self._room = trio.lowlevel.ParkingLot()
        await self._room.park()

    def requeue(self, payload: Payload) -> bool:
        """Broadcast messages are not taken back (each consumer has its own copy)."""
        return False

    async def acknowledge(self) -> None:
        """Nothing to confirm: the message was this consumer's alone."""

    def close(self) -> int:
        """End the stream: what it held is discarded (an :class:`Unfinished` rest is kept
        for :meth:`take_unfinished`); the reader's next receive raises EndOfChannel."""
        left = self.messages
        self._closed = True
        self._deferred = False
        self._items = None  # (a waiting reader is woken below: no direct write after)
        self._handed = False
        self._occupancy.remove(left)
        self.messages = self.bytes = self.traced = 0
        waiter = self._waiter
        if waiter is not None:
            self._wake(waiter)
        if self._room is not None:
            self._room.unpark_all()
        return left

    def _taken(self, payload: Item) -> int:
        """``payload`` left the buffer (received or dropped): its place and bytes are free;
        returns its size."""
        kind = type(payload)
        if kind is Entry or kind is Traced:
            size: int = payload.size  # type: ignore[union-attr]
        else:
            size = size_of(payload)  # type: ignore[arg-type]
        self.messages -= 1
        self.bytes -= size
        self._occupancy.messages -= 1
        if self._room:
            self._room.unpark_all()
        return size


class QueueBudget:
    """The bytes every local queue of a relay holds together, at most ``max_bytes``.

    Without it, queue channels with a backlog (they never go away while they hold messages)
    could each hold ``queue_buffer_messages * max_message_bytes``, and enough of them would
    take the relay's memory and its ``max_channels`` for everyone. A message larger than what
    is left waits, like a full queue; one always fits when nothing is queued.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._room = trio.lowlevel.ParkingLot()

    def fits(self, size: int) -> bool:
        return self.bytes + size <= self.max_bytes or not self.bytes

    async def wait_for_change(self) -> None:
        """Return at the next :meth:`wake` (room made, or a queue closed)."""
        await self._room.park()

    def add(self, size: int) -> None:
        self.bytes += size

    def remove(self, size: int) -> None:
        self.bytes -= size
        self.wake()

    def wake(self) -> None:
        """Make every waiter look again (room was made, or its queue closed)."""
        if self._room:
            self._room.unpark_all()


class LocalQueue:
    """A queue channel's shared buffer of ``max_messages`` (memory broker), its bytes counted
    against the relay's :class:`QueueBudget`.

    :meth:`put` waits while it is full, or the budget is: backpressure on the publisher. Every
    consumer reads it through its own :class:`QueueReader`, so each message goes to the one
    that has waited longest (trio's memory channels serve receivers in order).
    """

    def __init__(
        self,
        max_messages: int,
        occupancy: Occupancy,
        budget: QueueBudget,
        full_timeout_seconds: float = float("inf"),
    ) -> None:
        self._send, self._receive = trio.open_memory_channel[Payload](max_messages)
        self._max_messages = max_messages
        self._full_timeout = full_timeout_seconds
        self._closed = False
        self._occupancy = occupancy
        self.budget = budget
        # Where a publisher that must not wait inside a publish waits for room first.
        self._room: trio.lowlevel.ParkingLot | None = None

    @property
    def full(self) -> bool:
        return self._send.statistics().current_buffer_used >= self._max_messages

    async def wait_for_room(self, size: int) -> None:
        """Return once a message of ``size`` would be queued without waiting; raise
        :class:`trio.ClosedResourceError` once the queue is closed."""
        while True:
            if self._closed:
                raise trio.ClosedResourceError("the queue is closed")
            if not self.budget.fits(size):
                await self.budget.wait_for_change()
                continue
            if not self.full:
                return
            if self._room is None:
                self._room = trio.lowlevel.ParkingLot()
            await self._room.park()

    def taken(self, size: int) -> None:
        """A reader took a message of ``size``: give its bytes back; wake whoever waits."""
        self.budget.remove(size)
        if self._room:
            self._room.unpark_all()

    async def put(self, payload: Payload, size: int) -> None:
        """Queue ``payload`` (of ``size`` bytes), waiting for room;
        :class:`trio.ClosedResourceError` once closed, :class:`~triorelay.errors.QueueFull`
        when there was no room for ``full_timeout``.

        The wait is bounded so that a producer never waits for ever on a queue nobody reads
        (holding its connection, and the budget for everyone)."""
        if self.full or not self.budget.fits(size):
            with trio.move_on_after(self._full_timeout):
                await self.wait_for_room(size)
            if self.full or not self.budget.fits(size):
                raise QueueFull(
                    f"the queue stayed full for {self._full_timeout:g} s: message not queued"
                )
        # There is room, and nothing checkpoints before send() takes the message. Count
        # first: a waiting consumer may take the message before send() returns.
        self._occupancy.add()
        self.budget.add(size)
        try:
            await self._send.send(payload)
        except BaseException:
            self._occupancy.remove()
            self.budget.remove(size)
            raise

    def put_back(self, payload: Payload) -> bool:
        """Queue ``payload`` again if there is room at once (its bytes were counted before)."""
        try:
            self._send.send_nowait(payload)
        except (trio.WouldBlock, trio.ClosedResourceError):
            return False
        self._occupancy.add()
        self.budget.add(size_of(payload))
        return True

    def reader(self) -> QueueReader:
        return QueueReader(self, self._receive.clone(), self._occupancy)

    def close(self) -> None:
        """End every reader's stream once what is queued is gone; refuse further puts."""
        self._closed = True
        self._send.close()
        if self._room:
            self._room.unpark_all()
        self.budget.wake()


class QueueReader(_MemoryInbox):
    """One consumer's side of a :class:`LocalQueue`."""

    __slots__ = ("_occupancy", "_queue")

    def __init__(
        self,
        queue: LocalQueue,
        receive: trio.MemoryReceiveChannel[Payload],
        occupancy: Occupancy,
    ) -> None:
        self._queue = queue
        self._receive = receive
        self._occupancy = occupancy
        self._closed = False
        self.last_size = 0

    def _taken(self, payload: Item) -> None:
        self._occupancy.remove()
        size = self.last_size = size_of(payload)  # type: ignore[arg-type] # queues hold payloads
        self._queue.taken(size)

    def requeue(self, payload: Payload) -> bool:
        return self._queue.put_back(payload)

    async def acknowledge(self) -> None:
        """Nothing to confirm: a local queue forgets a message once taken."""

    def close(self) -> int:
        self._closed = True
        self._receive.close()
        return 0


class SourceReader:
    """A queue consumer's side of a broker-held queue (Redis): one message at a time.

    :meth:`receive` takes the next message from the broker and :meth:`acknowledge` confirms it
    once sent. A message received and not acknowledged (the client left first) stays the
    broker's and goes back to the queue when the reader closes (:meth:`QueueSource.release`).
    """

    __slots__ = ("_closed", "_consumer_id", "_receipt", "_source", "last_size")

    def __init__(self, source: QueueSource, consumer_id: int) -> None:
        self._source = source
        self._consumer_id = consumer_id
        self._receipt: object | None = None
        self._closed = False
        self.last_size = 0

    @property
    def closed(self) -> bool:
        return self._closed

    async def receive(self) -> Payload:
        if self._closed:
            raise trio.EndOfChannel
        payload, self._receipt = await self._source.take(self._consumer_id)
        self.last_size = size_of(payload)
        return payload

    def receive_nowait(self) -> Payload:
        raise trio.WouldBlock

    def requeue(self, payload: Payload) -> bool:
        """Left unacknowledged: the broker gives it back when this reader closes."""
        return True

    async def acknowledge(self) -> None:
        receipt, self._receipt = self._receipt, None
        if receipt is not None:
            await self._source.acknowledge(receipt)

    def close(self) -> int:
        if not self._closed:
            self._closed = True
            self._source.release(self._consumer_id)
        return 0
