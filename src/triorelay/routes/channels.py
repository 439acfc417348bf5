"""``/ws/producer[/{channel}]`` and ``/ws/consumer[/{channel}]``: the relay's own endpoints.

Each is a thin handler on :func:`~triorelay.routes.session.open_session`:

- a producer's messages are published a TCP read at a time, from Hypercorn's reader task where
  the fast path allows (:class:`Publisher`), and answered with acks;
- a consumer's writer sends what its buffer holds, in one socket write per batch
  (:func:`write_loop`); its client's disconnect is reported by Hypercorn's own reader.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Literal, cast

import trio

from triorelay import framing
from triorelay.auth.limits import TokenBucket
from triorelay.compat.hypercorn import DirectWebSocket
from triorelay.envelopes import Payload, dropped_notice, id_ack, size_of
from triorelay.errors import (
    BrokerUnavailable,
    CloseCode,
    InvalidQuery,
    MessageTooBig,
    RateLimited,
    RequestError,
)
from triorelay.hub import (
    Consumer,
    Item,
    Producer,
    Unfinished,
    WriteManyNow,
    WriteNow,
    validate_channel_name,
)
from triorelay.lifecycle import SHUTDOWN_REASON
from triorelay.routes import positioned, traces
from triorelay.routes.asgi import Message, Receive, Socket, payload_of
from triorelay.routes.jobs import JobConsumer
from triorelay.routes.session import Request, Session, open_session
from triorelay.settings import ChannelConfig
from triorelay.tracing import Trace, new_trace_id, now_ns

AckMode = Literal["echo", "id", "none"]

MAX_BATCH = 64
"""Most messages taken or written in one go by a producer's or consumer's loop."""


def query_value(query: dict[str, list[str]], name: str, allowed: tuple[str, ...]) -> str:
    """The one value of query parameter ``name`` (default: the first allowed); else 400."""
    values = query.get(name, [allowed[0]])
    if len(values) != 1 or values[0] not in allowed:
        raise InvalidQuery(f"{name} must be one of {', '.join(allowed)}")
    return values[0]


async def produce(request: Request) -> None:
    """Publish each message the client sends on its channel; answer as ``?ack=`` says."""
    relay, channel = request.relay, request.argument
    validate_channel_name(channel)
    ack: AckMode = query_value(request.query, "ack", ("echo", "id", "none"))  # type: ignore[assignment]
    traced = query_value(request.query, "trace", ("false", "true")) == "true"
    if not relay.hub.broker.ready:
        relay.hub.broker.want_ready()
        raise BrokerUnavailable("the broker is unavailable: try again later")
    async with open_session(request, relay.hub.attach_producer(channel)) as session:
        producer = session.connection
        publisher = Publisher(session, ack, trace_id=new_trace_id() if traced else None)
        try:
            if session.tap is not None:
                await session.read_inbound(publisher.publish_from_reader)
            else:
                await publisher.run(request.receive)
            producer.disconnected = True
        except trio.ClosedResourceError:  # the hub closed the channel: shutting down
            producer.close(CloseCode.GOING_AWAY, SHUTDOWN_REASON)


async def consume(request: Request) -> None:
    """Send the client every message of its channel; ``?notices=true`` adds notices.

    A client that offers the ``triorelay.v1`` subprotocol gets it: every message with its
    position, and may resume (``?since=``; see ``docs/reference/framing.md``).
    """
    relay, channel = request.relay, request.argument
    validate_channel_name(channel)
    notices = query_value(request.query, "notices", ("false", "true")) == "true"
    wants_traces = query_value(request.query, "trace", ("false", "true")) == "true"
    framed = framing.SUBPROTOCOL in request.subprotocols
    config = relay.settings.channel_config(channel)
    resume = None
    if framed and config.acked:
        if positioned.asks_to_resume(request.query):
            raise InvalidQuery("an acked queue channel has no positions to resume from")
        await consume_jobs(request, config)
        return
    if framed:
        if config.mode != "broadcast":
            raise InvalidQuery(
                f"the {framing.SUBPROTOCOL} framing is for broadcast channels and acked queues"
            )
        resume = positioned.resume_query(request.query)
    elif positioned.asks_to_resume(request.query):
        raise InvalidQuery(f"since and recover need the {framing.SUBPROTOCOL} subprotocol")
    attach = relay.hub.attach_consumer(channel, notices=notices, positioned=framed)
    subprotocol = framing.SUBPROTOCOL if framed else None
    async with open_session(request, attach, subscribe=channel, subprotocol=subprotocol) as session:
        consumer = session.connection
        consumer.traces = wants_traces
        if resume is not None:
            recovery, cursor = await positioned.subscribe(relay.hub, consumer, resume)
            opening = positioned.opening_frames(channel, recovery, resume, positioned.FRAMING)
            if not await session.socket.send_many(opening):
                consumer.disconnected = True
                return
            write: Callable[[], Awaitable[None]] = partial(
                positioned.write_positioned,
                consumer,
                session.socket.send_many,
                cursor,
                positioned.FRAMING,
            )
        else:
            write = partial(write_loop, consumer, session.socket, notices)
        if session.tap is not None:
            # Hypercorn's reader reports the disconnect: no reader task of our own. What a
            # consumer sends is discarded (but for a token refresh), and its size limit still
            # holds, checked on each frame's header before anything is buffered.
            session.tap.on_disconnect = partial(_disconnected, session)
            if session.refreshable:
                session.take_controls_from_tap()
            await session.tap.start()
            await write()
        else:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_read_until_disconnect, session)
                await write()
                nursery.cancel_scope.cancel()
        if consumer.detached:
            # The hub ended this consumer's stream: the relay is shutting down.
            consumer.close(CloseCode.GOING_AWAY, SHUTDOWN_REASON)
        else:
            consumer.disconnected = True  # the client went away mid-send


async def consume_jobs(request: Request, config: ChannelConfig) -> None:
    """A framed consumer of an acked queue channel (``routes/jobs.py``)."""
    relay, channel = request.relay, request.argument
    attach = relay.hub.attach_consumer(channel)
    async with open_session(
        request, attach, subscribe=channel, subprotocol=framing.SUBPROTOCOL
    ) as session:
        await JobConsumer(session, config).run()
        if session.connection.detached:
            session.connection.close(CloseCode.GOING_AWAY, SHUTDOWN_REASON)


def _disconnected(session: Session[Consumer]) -> None:
    session.connection.disconnected = True
    session.scope.cancel()


async def _read_until_disconnect(session: Session[Consumer]) -> None:
    """A consumer's reader (without a tap, or with a token): take what the client sends for
    its control messages (a token refresh) until it leaves."""
    await session.read_controls()
    _disconnected(session)


class Publisher:
    """Publishes a producer's messages and answers with acks, a batch at a time.

    Each producer connection has a publish rate (``publish_rate_*_per_second``, token
    buckets holding one second's worth): past it the producer is closed with 1008. One message
    in ``latency_sample_messages`` is traced (:mod:`triorelay.tracing`), every one with a
    ``trace_id`` (the producer asked, ``?trace=true``).
    """

    def __init__(
        self, session: Session[Producer], ack: AckMode, *, trace_id: str | None = None
    ) -> None:
        self.session = session
        self.producer = session.connection
        self.ack = ack
        self.socket = session.socket
        settings = session.relay.settings
        self.max_bytes = settings.max_message_bytes
        now = trio.current_time()
        self._messages = TokenBucket(settings.publish_rate_messages_per_second, now)
        self._bytes = TokenBucket(settings.publish_rate_bytes_per_second, now)
        self.trace_id = trace_id
        self._sample_every = settings.latency_sample_messages
        self._until_sample = self._sample_every

    async def publish(self, payloads: list[Payload]) -> None:
        """Publish ``payloads`` in order, then send their acks in one write.

        Each ack covers a published message only: on MessageTooBig (or RateLimited) the acks
        of the messages before it still go out, then the error propagates.
        """
        if self.session.refreshable:
            payloads = await self.session.take_controls(payloads)
            if not payloads:
                return
        sizes = list(map(size_of, payloads))
        total = sum(sizes)
        now = trio.current_time()
        if not self._messages.take(len(payloads), now) or not self._bytes.take(total, now):
            raise RateLimited("publishing faster than this relay's rate limit for a producer")
        max_bytes = self.max_bytes
        too_big = None
        if max(sizes) > max_bytes:
            too_big = next(p for p, size in zip(payloads, sizes, strict=True) if size > max_bytes)
            accepted = payloads[: payloads.index(too_big)]
            total = sum(sizes[: len(accepted)])
        else:
            accepted = payloads
        published: list[int] = []
        traced: dict[int, Trace] | None = None
        if self.trace_id is not None:
            read_ns = now_ns()
            traced = {i: Trace(read_ns, self.trace_id) for i in range(len(accepted))}
        elif self._sample_every:
            self._until_sample -= len(accepted)
            if self._until_sample <= 0 and accepted:
                self._until_sample = self._sample_every
                traced = {len(accepted) - 1: Trace(now_ns())}
        try:
            if accepted:
                await self.producer.publish_many(accepted, published, traced, total)
            if too_big is not None:
                size = size_of(too_big)
                raise MessageTooBig(f"message of {size} bytes over the limit {max_bytes}")
        finally:
            count = len(published)
            if self.ack == "echo":
                if count == len(accepted):  # the common case: every message published
                    acks: list[Payload] = accepted
                    acked_bytes = total
                else:
                    acks = accepted[:count]
                    acked_bytes = sum(sizes[:count])
            elif self.ack == "id":
                acks = [id_ack(seq) for seq in published]
                acked_bytes = sum(map(len, acks))  # ASCII
            else:
                acks = []
            if acks:
                # Written at once where the socket takes them (no cancel scope, no wait).
                written = self.socket.send_many_nowait(acks)
                if written is not True:
                    # Waiting for the producer to read its acks is not the relay holding its
                    # reading back: a peer that never reads them is a silent one, for
                    # liveness to close (and the reaper to drop).
                    self.session.release()
                    with trio.CancelScope(shield=True):  # bounded: the reaper drops stuck sockets
                        if written is False:
                            written = await self.socket.send_many(acks)
                        else:  # the socket took part of them: the rest follows first
                            written = await self.socket.finish_many(written, [])
                if written:
                    self.producer.messages_out += count
                    self.producer.bytes_out += acked_bytes

    async def publish_from_reader(self, payloads: list[Payload]) -> None:
        """:meth:`publish`, called from Hypercorn's reader task: errors close the producer."""
        producer = self.producer
        if producer.close_code is not None:
            return  # closing: what still arrives is not accepted (and not acked)
        try:
            await self.publish(payloads)
        except RequestError as error:
            producer.close(error.close_code, str(error))
        except trio.ClosedResourceError:
            producer.close(CloseCode.GOING_AWAY, SHUTDOWN_REASON)

    async def run(self, receive: Receive) -> None:
        """Read and publish until the producer disconnects (when no tap is available).

        Messages Hypercorn already queued are taken in one go (up to MAX_BATCH).
        """
        event = await receive()
        while event["type"] == "websocket.receive":
            batch = [payload_of(event)]
            following: Message | None = None
            while len(batch) < MAX_BATCH:
                try:
                    queued = self.socket.receive_nowait()
                except trio.WouldBlock:
                    break
                if queued["type"] != "websocket.receive":
                    following = queued
                    break
                batch.append(payload_of(queued))
            await self.publish(batch)
            event = following if following is not None else await receive()


async def write_loop(consumer: Consumer, socket: Socket, notices: bool) -> None:
    """A consumer's writer: send its messages until its stream ends (``EndOfChannel``).

    Broadcast consumers send what is buffered in one go (up to MAX_BATCH); queue consumers take
    one message at a time, so the others get their share. On Hypercorn's batch path a
    broadcast consumer also takes messages while this task waits (``Consumer.write_directly``):
    the publishing task writes each one to the socket itself, encoded once for every consumer,
    and this task wakes only for what the socket could not take at once (a full socket,
    another write under way), a message traced for its producer, or a ``dropped`` notice to
    send first. The
    order holds: nothing is written directly while anything is buffered or being written.
    """
    direct = socket.direct if consumer.buffer is not None else None
    if direct is not None and not direct.writes_directly:
        direct = None  # (compression, or Hypercorn kept its lock: every write waits its turn)
    if direct is not None:
        consumer.write_directly(*_direct_writes(consumer, direct, notices))
    # The loop is in this frame, not in a helper it awaits: an idle consumer holds its writer's
    # frames for its whole life, about 0.2 KB each.
    try:
        batch_limit = 1 if consumer.mode == "queue" else MAX_BATCH
        while True:
            try:
                items: list[Item] = [await consumer.receive()]
            except trio.EndOfChannel:
                return
            consumer.take_buffered(items, batch_limit)
            # The rest of a direct write the socket took only part of comes first (its first
            # bytes are out, and the send lock is taken for the rest).
            head = items[0]
            rest = items.pop(0).rest if type(head) is Unfinished else None  # type: ignore[union-attr]
            traced = traces.take_traced(consumer, items)
            if traced:
                taken_ns = now_ns()
                batch = traces.unwrap(items)
            else:
                # A raw consumer's inbox holds payloads only (but for the traced ones).
                batch = cast(list[Payload], items)
            if notices and consumer.pending_dropped:
                batch.insert(0, dropped_notice(consumer.take_dropped_notice(), consumer.dropped))
            sent = False
            try:
                if rest is not None:
                    sent = await socket.finish_many(rest, batch)
                else:
                    sent = await socket.send_many(batch)
            finally:
                # Queue mode: a message taken but not sent goes back for another consumer.
                if not sent and batch_limit == 1:
                    consumer.requeue(batch[-1])
            if not sent:
                return  # the client is gone; the reader sees its disconnect
            if traced:
                told = traces.written(consumer, traced, taken_ns)
                if told and not await socket.send_many(list[Payload](told)):
                    return
            if batch_limit == 1:
                await consumer.acknowledge()  # queue mode: handed to the socket, so delivered
    finally:
        if direct is not None:
            consumer.write_directly(None)
            unfinished = consumer.take_unfinished()
            if unfinished is not None:
                # Part of a frame is on the wire and the send lock is taken for the rest: it
                # goes out whatever ended this writer (bounded: the reaper drops stuck sockets).
                with trio.CancelScope(shield=True):
                    await socket.finish_many(unfinished.rest, [])


def _direct_writes(
    consumer: Consumer, direct: DirectWebSocket, notices: bool
) -> tuple[WriteNow, WriteManyNow]:
    """What a raw broadcast consumer's socket takes from the publishing task: each message,
    or a batch's in one write, unless the client has a ``dropped`` notice coming (the writer
    sends that first)."""
    send_nowait, send_many_nowait = direct.send_nowait, direct.send_many_nowait
    if not notices:
        return send_nowait, send_many_nowait

    def write(payload: Payload) -> bool | bytes:
        if consumer.pending_dropped:
            return False
        return send_nowait(payload)

    def write_many(payloads: list[Payload]) -> bool | bytes:
        if consumer.pending_dropped:
            return False
        return send_many_nowait(payloads)

    return write, write_many
