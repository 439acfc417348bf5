"""A consumer connection kept open across reconnections: what :func:`~triorelay.client.subscribe`
and :func:`~triorelay.client.consume_jobs` share.

A :class:`Connector` runs in a task of its own: it connects to ``/ws/consumer/{channel}``
with the ``triorelay.v1`` framing, reads each frame through a :class:`Stream` (the I/O-free
part that knows what the frames mean), hands what the stream makes of them to a reader
through a bounded memory channel, and reconnects after a backoff delay whenever the
connection ends in a way worth another attempt. The stream says where each connection
starts (its query), and stamps each item it hands over (a subscription with its position, a
job consumer with its connection's number).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Generic, NoReturn, Protocol, TypeVar

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from triorelay.client.backoff import Backoff
from triorelay.client.connection import (
    Liveness,
    Token,
    closed_error,
    endpoint_url,
    open_connection,
    refresh_forever,
    reraise_single,
    resolve_token,
)
from triorelay.client.errors import (
    ConnectionFailed,
    ProtocolError,
    RecoveryFailed,
    Rejected,
    retryable_close,
    retryable_status,
)
from triorelay.client.stream import Reconnecting
from triorelay.envelopes import Payload
from triorelay.errors import CloseCode
from triorelay.framing import SUBPROTOCOL

logger = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
StampT = TypeVar("StampT")
ItemT_co = TypeVar("ItemT_co", covariant=True)
StampT_co = TypeVar("StampT_co", covariant=True)


@dataclass(frozen=True, slots=True)
class Disconnect:
    """How one connection attempt ended, when it is worth another: its close code (None
    without a WebSocket or a close frame), what happened, and whether it was subscribed."""

    code: int | None
    reason: str
    subscribed: bool


async def retry_forever(
    connect_once: Callable[[], Awaitable[Disconnect]],
    backoff: Backoff,
    notify: Callable[[Reconnecting], Awaitable[None]],
) -> NoReturn:
    """Call ``connect_once`` again and again, ``backoff`` apart; raises what it raises.

    The attempt count (and so the delay's ceiling) starts again from 0 after a connection
    that was subscribed, unless the relay closed it with 1013 (try again later: a slow
    consumer evicted, the broker gone; coming straight back, and replaying the history each
    time, is what it asked not to); ``notify`` hears of each wait before it starts.
    """
    attempt = 0
    while True:
        ended = await connect_once()
        if ended.subscribed and ended.code != CloseCode.TRY_AGAIN_LATER:
            attempt = 0
        delay = backoff.delay_seconds(attempt)
        attempt += 1
        await notify(Reconnecting(ended.code, ended.reason, attempt, delay))
        await trio.sleep(delay)


@dataclass(frozen=True, slots=True)
class Failure:
    """What ended the connector for good, handed to the reader to raise in its own task."""

    error: Exception


class Stream(Protocol[ItemT_co, StampT_co]):
    """What a connector needs of the frames' meaning (I/O-free).

    ``subscribed``: the current connection delivered its first frame (a connection that did
    resets the backoff). :meth:`receive` returns what the reader should see of a frame (None:
    nothing), or raises a :class:`~triorelay.client.errors.ClientError` that ends the
    connector for good; :meth:`stamp` is handed over with each item.
    """

    @property
    def channel(self) -> str: ...

    @property
    def subscribed(self) -> bool: ...

    def query(self) -> Mapping[str, str]:
        """The query of the next connection (``since`` and ``recover`` for a resume)."""
        ...

    def connected(self) -> None:
        """A new connection opened (its handshake done)."""
        ...

    def receive(self, frame: Payload) -> ItemT_co | None: ...

    def stamp(self) -> StampT_co: ...


Entry = tuple[ItemT | Reconnecting | Failure, StampT | None]
"""What a connector hands to its reader: an item (or a reconnection, or what ended it) and
the stream's stamp then (None with a failure)."""


class Stopped(Exception):
    """The connector was stopped while connected: its connection is closed, stop."""


class Connector(Generic[ItemT, StampT]):
    """A consumer's connection task: connect, read, reconnect; hand over what it read.

    ``ws`` is the open connection while one is being read (None between connections, and
    from the moment :meth:`reconnect` or :meth:`stop` ends one), and ``send_lock`` the lock
    every writer of it holds (frames must not interleave): the token refresh, and a job
    consumer's acks.
    """

    def __init__(
        self,
        url: str,
        stream: Stream[ItemT, StampT],
        send: trio.MemorySendChannel[Entry[ItemT, StampT]],
        *,
        token: Token | None,
        backoff: Backoff,
        token_refresh_seconds: float | None,
        ping_interval_seconds: float | None,
        ping_timeout_seconds: float,
        connect_timeout_seconds: float,
        close_timeout_seconds: float,
        max_frame_bytes: int,
    ) -> None:
        self.url = url
        self.stream = stream
        self.send = send
        self.token = token
        self.backoff = backoff
        self.liveness = (
            None
            if ping_interval_seconds is None
            else Liveness(ping_interval_seconds, ping_timeout_seconds)
        )
        self.token_refresh_seconds = token_refresh_seconds
        self.connect_timeout_seconds = connect_timeout_seconds
        self.close_timeout_seconds = close_timeout_seconds
        self.max_frame_bytes = max_frame_bytes
        self.ws: WebSocketConnection | None = None
        self.send_lock = trio.Lock()
        self._scope = trio.CancelScope()
        self._reading: trio.CancelScope | None = None
        self._stopping = False
        self._reconnect_asked = False
        #: An item is being handed to the reader (cancelling now would lose it).
        self._delivering = False
        #: The hand-over under way when the reader's buffer is full: only stop() cuts it.
        self._handing: trio.CancelScope | None = None

    @contextlib.asynccontextmanager
    async def running(
        self, receive: trio.MemoryReceiveChannel[Entry[ItemT, StampT]]
    ) -> AsyncIterator[None]:
        """Run the connection task while the body runs (its reader reads ``receive``); then
        stop it (see :meth:`stop`) and close ``receive``. An error of the task's or the
        body's comes out as it is, not in an exception group."""
        try:
            async with receive, trio.open_nursery() as nursery:
                nursery.start_soon(self.run)
                try:
                    yield
                finally:
                    self.stop()
        except BaseExceptionGroup as group:
            reraise_single(group)

    def reconnect(self) -> None:
        """Close the connection (1000) and connect again at once (no checkpoint).

        Not in the middle of handing an item over (a subscription's position already counts
        it): then once it is handed over."""
        if self._reading is not None and not self._stopping:
            self._reconnect_asked = True
            self.ws = None  # ending: not for writers any more
            if not self._delivering:
                self._reading.cancel()

    def stop(self) -> None:
        """End the task: politely (close 1000) if connected, at once otherwise; either way
        within ``close_timeout_seconds``."""
        self._stopping = True
        self.ws = None
        self._scope.deadline = min(
            self._scope.deadline, trio.current_time() + self.close_timeout_seconds
        )
        if self._handing is not None:
            self._handing.cancel()
        if self._reading is not None:
            self._reading.cancel()
        else:
            self._scope.cancel()

    async def run(self) -> None:
        """Connect until stopped; what ends the connector goes to the reader."""
        with self._scope:
            async with self.send:
                try:
                    await retry_forever(self._connect_once, self.backoff, self._reconnecting)
                except Stopped:
                    return
                except Exception as error:  # the reader raises it, in its own task
                    logger.debug("consumer of %s ended: %r", self.stream.channel, error)
                    await self.send.send((Failure(error), None))

    async def _reconnecting(self, event: Reconnecting) -> None:
        logger.info(
            "channel %s: connection ended (%s %s), reconnecting in %.3f s (attempt %d)",
            self.stream.channel,
            event.code,
            event.reason,
            event.delay_seconds,
            event.attempt,
        )
        await self._deliver(event)

    async def _connect_once(self) -> Disconnect:
        stream = self.stream
        url = endpoint_url(self.url, f"/ws/consumer/{stream.channel}", stream.query())
        token = await resolve_token(self.token)
        try:
            async with open_connection(
                url,
                token=token,
                subprotocols=[SUBPROTOCOL],
                max_frame_bytes=self.max_frame_bytes,
                connect_timeout_seconds=self.connect_timeout_seconds,
                close_timeout_seconds=self.close_timeout_seconds,
            ) as ws:
                stream.connected()
                if ws.subprotocol != SUBPROTOCOL:
                    raise ProtocolError(
                        f"the relay did not accept the {SUBPROTOCOL} framing (is it older "
                        "than this client?)"
                    )
                ended = await self._session(ws)
        except ConnectionFailed as failed:
            return Disconnect(None, str(failed), False)
        except Rejected as rejected:
            if not retryable_status(rejected.status):
                raise
            return Disconnect(None, str(rejected), False)
        if self._stopping:
            raise Stopped
        return ended

    async def _session(self, ws: WebSocketConnection) -> Disconnect:
        """Read one connection until it ends; its keepalive and refresh tasks beside."""
        ended: Disconnect | None = None
        self.ws = ws
        try:
            with trio.CancelScope() as self._reading:
                try:
                    async with trio.open_nursery() as nursery:
                        if self.liveness is not None:
                            nursery.start_soon(self._watch, ws, self.liveness, nursery.cancel_scope)
                        if self.token_refresh_seconds is not None and callable(self.token):
                            nursery.start_soon(self._refresh, ws, self.token_refresh_seconds)
                        ended = await self._read(ws)
                        nursery.cancel_scope.cancel()
                except BaseExceptionGroup as group:
                    reraise_single(group)
        finally:
            self._reading = None
            self.ws = None
        # Taken whatever ended the connection: one asked for as it was ending (a close came
        # meanwhile) must not cut the next one.
        asked, self._reconnect_asked = self._reconnect_asked, False
        if ended is None and asked:
            return Disconnect(CloseCode.NORMAL, "a reconnection was asked for", True)
        if ended is None:  # cut short: the relay went silent, or the consumer is closing
            timeout = self.liveness.timeout_seconds if self.liveness else 0
            return Disconnect(None, f"no pong within {timeout} s", self.stream.subscribed)
        return ended

    async def _read(self, ws: WebSocketConnection) -> Disconnect:
        stream = self.stream
        try:
            liveness = self.liveness
            while True:
                message = await ws.get_message()
                if liveness is not None:
                    liveness.heard()
                item = stream.receive(message)
                if item is not None:
                    await self._deliver(item)
        except ConnectionClosed as closed:
            error = closed_error(closed)
        if error.code == CloseCode.RECOVERY_FAILED:
            said = error.reason.removeprefix("recovery failed:").strip() or None
            raise RecoveryFailed(error.code, error.reason, said)
        if not retryable_close(error.code, fresh_token=callable(self.token)):
            raise error
        return Disconnect(error.code, error.reason or "connection lost", stream.subscribed)

    async def _deliver(self, item: ItemT | Reconnecting) -> None:
        entry: Entry[ItemT, StampT] = (item, self.stream.stamp())
        try:
            self.send.send_nowait(entry)
        except trio.WouldBlock:
            self._delivering = True
            try:
                # The stream counted the item already (a subscription's position is past
                # it), so nothing but stop() may cut this hand-over: not reconnect() (it
                # waits for it, see there), not the keepalive, and not a reconnect() that
                # came between the item's read and here (it cancelled the connection, and
                # this wait would be cut with it: the item lost, the next connection
                # resuming after it).
                with trio.CancelScope(shield=True) as self._handing:
                    if self._stopping:
                        self._handing.cancel()
                    if self.liveness is None:
                        await self.send.send(entry)
                    else:
                        with self.liveness.holding_back():
                            await self.send.send(entry)
            finally:
                self._handing = None
                self._delivering = False
            if self._reconnect_asked and self._reading is not None:
                self._reading.cancel()

    async def _watch(
        self, ws: WebSocketConnection, liveness: Liveness, session: trio.CancelScope
    ) -> None:
        with contextlib.suppress(ConnectionClosed):
            await liveness.watch(ws)
            logger.info("channel %s: the relay went silent", self.stream.channel)
            session.cancel()

    async def _refresh(self, ws: WebSocketConnection, every_seconds: float) -> None:
        assert callable(self.token)
        with contextlib.suppress(ConnectionClosed):
            await refresh_forever(ws, self.token, every_seconds, self.send_lock)
