"""The relay's WebSocket endpoints, on a lean ASGI path beside the Quart app.

``/ws/producer[/{channel}]`` and ``/ws/consumer[/{channel}]`` are served here, straight on the
ASGI ``receive``/``send`` callables Hypercorn gives us, not through Quart's ``websocket``
object. Quart-Trio's WebSocket layer adds a task and a queue per connection (two more task
hops per message, most of a naive relay's cost) and has three traps this path avoids:

- it delivers an empty binary message as ``None`` (``event.get("bytes") or event["text"]``);
- its reader stops reading at 10 unread messages, so it never sees the disconnect, and the
  handler is never cancelled;
- after a disconnect, its ``send`` returns without a checkpoint, so a send loop spins.

Every other path (HTTP, unknown WebSocket paths) goes to Quart. Errors become HTTP statuses
before the upgrade and close codes after it (:mod:`triorelay.errors`).
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, ExitStack
from functools import partial
from typing import Literal, TypeVar
from urllib.parse import parse_qs

import trio

from triorelay.compat import hypercorn as hypercorn_compat
from triorelay.compat import message_limits
from triorelay.envelopes import Payload, dropped_notice, id_ack
from triorelay.errors import (
    BrokerUnavailable,
    CloseCode,
    InvalidQuery,
    MessageTooBig,
    RequestError,
)
from triorelay.hub import Connection, Consumer, Producer, validate_channel_name
from triorelay.relay import Relay
from triorelay.routes.asgi import (
    ASGIApp,
    Message,
    Receive,
    Rejected,
    Scope,
    Send,
    Socket,
    payload_of,
    reject,
    wait_for_disconnect,
)

log = logging.getLogger(__name__)

AckMode = Literal["echo", "id", "none"]
C = TypeVar("C", bound=Connection)
DEFAULT_CHANNEL = "default"
_ROLES = {"/ws/producer": "producer", "/ws/consumer": "consumer"}
ECHO_PATH = "/ws/echo"


def parse_route(path: str) -> tuple[str, str] | None:
    """``(role, channel)`` for a relay path, ``None`` for any other path.

    The channel is not validated here: ``/ws/producer/a/b`` is a relay path with a bad name.
    """
    if path == ECHO_PATH:
        return "echo", ""
    role = _ROLES.get(path)
    if role is not None:
        return role, DEFAULT_CHANNEL
    for prefix, role in _ROLES.items():
        if path.startswith(prefix + "/"):
            return role, path[len(prefix) + 1 :]
    return None


def _query_value(query: dict[str, list[str]], name: str, allowed: tuple[str, ...]) -> str:
    values = query.get(name, [allowed[0]])
    if len(values) != 1 or values[0] not in allowed:
        raise InvalidQuery(f"{name} must be one of {', '.join(allowed)}")
    return values[0]


class RelayWebSockets:
    """ASGI middleware: relay WebSocket paths are served here, the rest by ``app``."""

    def __init__(self, app: ASGIApp, relay: Relay) -> None:
        self.app = app
        self.relay = relay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = parse_route(scope["path"]) if scope["type"] == "websocket" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        role, channel = route
        connect = await receive()
        if connect["type"] != "websocket.connect":  # pragma: no cover - the ASGI spec's order
            return
        if role == "echo":
            try:
                await self._echo(receive, send)
            except Rejected as rejected:
                await reject(send, rejected.error)
            return
        try:
            validate_channel_name(channel)
            query = parse_qs(scope["query_string"].decode("latin-1"), keep_blank_values=True)
            if role == "producer":
                ack: AckMode = _query_value(query, "ack", ("echo", "id", "none"))  # type: ignore[assignment]
            else:
                notices = _query_value(query, "notices", ("false", "true")) == "true"
        except RequestError as error:
            await reject(send, error)
            return
        try:
            if role == "producer":
                await self._produce(channel, ack, receive, send)
            else:
                await self._consume(channel, notices, receive, send)
        except Rejected as rejected:
            await reject(send, rejected.error)

    async def _open(
        self,
        stack: ExitStack,
        attach: AbstractContextManager[C],
        send: Send,
        subscribe: str | None = None,
    ) -> C:
        """Attach to the hub (refusing the upgrade on a RequestError), then accept.

        ``subscribe``: a consumer's channel; the upgrade waits until the broker delivers its
        messages here, so the consumer gets every message published once it is accepted.
        """
        try:
            connection = stack.enter_context(attach)
            if subscribe is not None:
                await self.relay.hub.broker.wait_watching(subscribe)
        except RequestError as error:
            raise Rejected(error) from None
        self.relay.reaper.track(connection, send)
        stack.callback(self.relay.reaper.forget, connection)
        settings = self.relay.settings
        if not settings.compression:
            hypercorn_compat.refuse_compression(send)
        # Fragmented and compressed messages: bounded inside Hypercorn and wsproto too.
        message_limits.limit_inbound(
            send, settings.max_message_bytes, partial(_closed_with_1009, connection)
        )
        if settings.tcp_user_timeout_seconds is not None:
            hypercorn_compat.set_user_timeout(send, settings.tcp_user_timeout_seconds)
        await send({"type": "websocket.accept"})
        return connection

    async def _produce(self, name: str, ack: AckMode, receive: Receive, send: Send) -> None:
        if not self.relay.hub.broker.ready:
            raise Rejected(BrokerUnavailable("the broker is unavailable: try again later"))
        with ExitStack() as stack:
            producer = await self._open(stack, self.relay.hub.attach_producer(name), send)
            socket = Socket(receive, send)
            max_bytes = self.relay.settings.max_message_bytes
            publisher = _Publisher(producer, ack, socket, max_bytes)
            # Where Hypercorn allows, its reader task publishes each TCP read's messages
            # itself: no task switch per message. Otherwise this task reads them.
            tap = self._tap(stack, producer, receive, send, socket, publisher.publish_from_reader)
            with trio.CancelScope() as scope:
                self._bind(producer, scope)
                try:
                    if tap is not None:
                        await tap.start()
                        await wait_for_disconnect(receive)
                    else:
                        await publisher.run(receive)
                    producer.disconnected = True
                except RequestError as error:
                    producer.close(error.close_code, str(error))
                except trio.ClosedResourceError:  # the hub closed the channel: shutting down
                    producer.close(CloseCode.GOING_AWAY, "server shutting down")
            await self._finish(producer, send)

    async def _consume(self, name: str, notices: bool, receive: Receive, send: Send) -> None:
        with ExitStack() as stack:
            attach = self.relay.hub.attach_consumer(name, notices=notices)
            consumer = await self._open(stack, attach, send, subscribe=name)
            socket = Socket(receive, send)
            # What a consumer sends is discarded, but its size limit still holds, checked on
            # each frame's header before anything is buffered.
            tap = self._tap(stack, consumer, receive, send, socket, _discard)
            with trio.CancelScope() as scope:
                self._bind(consumer, scope)
                if tap is not None:
                    # Hypercorn's reader reports the disconnect: no reader task of our own.
                    tap.on_disconnect = partial(_disconnected, consumer, scope)
                    await tap.start()
                    await _write_loop(consumer, socket, notices)
                else:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_read_until_disconnect, consumer, receive, scope)
                        await _write_loop(consumer, socket, notices)
                        nursery.cancel_scope.cancel()
                if consumer.detached:
                    # The hub ended this consumer's stream: the relay is shutting down.
                    consumer.close(CloseCode.GOING_AWAY, "server shutting down")
                else:
                    consumer.disconnected = True  # the client went away mid-send
            await self._finish(consumer, send)

    async def _echo(self, receive: Receive, send: Send) -> None:
        """Send every message back as it came (diagnostics and protocol conformance)."""
        with ExitStack() as stack:
            connection = await self._open(stack, self.relay.hub.attach_echo(), send)
            socket = Socket(receive, send)

            async def echo(payloads: list[Payload]) -> None:
                if connection.close_code is None:
                    await socket.send_many(payloads)

            tap = self._tap(stack, connection, receive, send, socket, echo)
            with trio.CancelScope() as scope:
                self._bind(connection, scope)
                await self._read_inbound(connection, receive, tap, echo)
                connection.disconnected = connection.close_code is None
            await self._finish(connection, send)

    async def _read_inbound(
        self,
        connection: Connection,
        receive: Receive,
        tap: hypercorn_compat.InboundTap | None,
        deliver: hypercorn_compat.OnMessages,
    ) -> bool:
        """Hand the client's messages to ``deliver`` until it disconnects (True), or sends one
        over ``max_message_bytes`` (closed with 1009; False).

        With a tap, Hypercorn's reader task calls ``deliver`` and this only waits for the
        disconnect; on plain ASGI this task reads and delivers one message at a time.
        """
        if tap is not None:
            await tap.start()
            await wait_for_disconnect(receive)
            return True
        max_bytes = self.relay.settings.max_message_bytes
        while (event := await receive())["type"] == "websocket.receive":
            payload = payload_of(event)
            if len(payload) > max_bytes:
                connection.close(CloseCode.MESSAGE_TOO_BIG, "message over the limit")
                return False
            await deliver([payload])
        return True

    def _tap(
        self,
        stack: ExitStack,
        connection: Connection,
        receive: Receive,
        send: Send,
        socket: Socket,
        on_messages: hypercorn_compat.OnMessages,
    ) -> hypercorn_compat.InboundTap | None:
        """Take the connection's inbound frames from Hypercorn's reader, and watch liveness."""
        tap = hypercorn_compat.tap_inbound(
            receive,
            send,
            on_messages,
            partial(_refuse, connection),
            self.relay.settings.max_message_bytes,
        )
        if tap is not None:
            stack.callback(tap.remove)
        if tap is not None and socket.direct is not None:
            self.relay.liveness.track(connection, tap, socket.direct)
            stack.callback(self.relay.liveness.forget, connection)
        else:
            self.relay.liveness.cannot_track()
        return tap

    def _bind(self, connection: Connection, scope: trio.CancelScope) -> None:
        """Let the hub cancel ``scope`` to end the connection, with the close clock running."""
        reaper = self.relay.reaper
        connection.bind(scope, on_close=lambda: reaper.arm(connection))

    async def _finish(self, connection: Connection, send: Send) -> None:
        """Send the close the hub asked for, unless the client is already gone."""
        if connection.disconnected or connection.close_code is None:
            return
        # Shielded, but bounded: the reaper drops the socket if the peer does not take it.
        self.relay.reaper.arm(connection)
        with trio.CancelScope(shield=True):
            await send(
                {
                    "type": "websocket.close",
                    "code": int(connection.close_code),
                    "reason": connection.close_reason,
                }
            )


MAX_BATCH = 64
"""Most messages taken or written in one go by a producer's or consumer's loop."""


class _Publisher:
    """Publishes a producer's messages and answers with acks, a batch at a time."""

    def __init__(self, producer: Producer, ack: AckMode, socket: Socket, max_bytes: int) -> None:
        self.producer = producer
        self.ack = ack
        self.socket = socket
        self.max_bytes = max_bytes

    async def publish(self, payloads: list[Payload]) -> None:
        """Publish ``payloads`` in order, then send their acks in one write.

        Each ack covers a published message only: on MessageTooBig the acks of the messages
        before it still go out, then the error propagates.
        """
        max_bytes = self.max_bytes
        too_big = next((p for p in payloads if len(p) > max_bytes), None)
        accepted = payloads if too_big is None else payloads[: payloads.index(too_big)]
        published: list[int] = []
        try:
            if accepted:
                await self.producer.publish_many(accepted, published)
            if too_big is not None:
                raise MessageTooBig(f"message of {len(too_big)} bytes over the limit {max_bytes}")
        finally:
            if self.ack == "echo":
                acks: list[Payload] = accepted[: len(published)]
            elif self.ack == "id":
                acks = [id_ack(seq) for seq in published]
            else:
                acks = []
            if acks:
                with trio.CancelScope(shield=True):  # bounded: the reaper drops stuck sockets
                    await self.socket.send_many(acks)

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
            producer.close(CloseCode.GOING_AWAY, "server shutting down")

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


def _refuse(connection: Connection, code: int, reason: str) -> None:
    """Close ``connection`` for what its client sent (invalid UTF-8, an oversized frame)."""
    connection.close(CloseCode(code), reason)


def _closed_with_1009(connection: Connection) -> None:
    """Hypercorn closed the connection with 1009 itself (a fragmented or compressed message
    over the limit): end the handler, so that a peer that ignores the close is dropped."""
    connection.close(CloseCode.MESSAGE_TOO_BIG, "message over the limit")
    connection.disconnected = True  # the close frame is sent: nothing left for _finish


async def _discard(payloads: list[Payload]) -> None:
    """What consumers send is not relayed."""


def _disconnected(consumer: Consumer, cancel_scope: trio.CancelScope) -> None:
    consumer.disconnected = True
    cancel_scope.cancel()


async def _read_until_disconnect(
    consumer: Consumer, receive: Receive, cancel_scope: trio.CancelScope
) -> None:
    """A consumer's reader (without a tap): discard what the client sends until it leaves."""
    await wait_for_disconnect(receive)
    _disconnected(consumer, cancel_scope)


async def _write_loop(consumer: Consumer, socket: Socket, notices: bool) -> None:
    """A consumer's writer: send its messages until its stream ends (``EndOfChannel``).

    Broadcast consumers send what is buffered in one go (up to MAX_BATCH); queue consumers take
    one message at a time, so the others get their share.
    """
    batch_limit = 1 if consumer.mode == "queue" else MAX_BATCH
    while True:
        try:
            batch: list[Payload] = [await consumer.receive()]
        except trio.EndOfChannel:
            return
        try:
            while len(batch) < batch_limit:
                batch.append(consumer.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            pass  # send what we have; an ended stream shows on the next receive
        if notices and consumer.pending_dropped:
            dropped = consumer.take_dropped_notice()
            batch.insert(0, dropped_notice(dropped, consumer.dropped))
        sent = False
        try:
            sent = await socket.send_many(batch)
        finally:
            # Queue mode: a message taken but not sent goes back for another consumer.
            if not sent and batch_limit == 1:
                consumer.requeue(batch[-1])
        if not sent:
            return  # the client is gone; the reader sees its disconnect
        if batch_limit == 1:
            await consumer.acknowledge()  # queue mode: handed to the socket, so delivered
