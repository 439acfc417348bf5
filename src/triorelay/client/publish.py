"""``open_publisher()`` and ``publish()``: messages to a channel, each answered with its offset."""

from __future__ import annotations

import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from triorelay.client.connection import (
    CLOSE_TIMEOUT_SECONDS,
    CONNECT_TIMEOUT_SECONDS,
    Liveness,
    Token,
    closed_error,
    endpoint_url,
    open_connection,
    refresh_forever,
    reraise_single,
    resolve_token,
)
from triorelay.client.errors import ClientError, Closed, ProtocolError
from triorelay.envelopes import Payload

logger = logging.getLogger(__name__)

MAX_IN_FLIGHT = 64
"""Default bound on a publisher's messages sent and not yet acknowledged."""


class Ack:
    """The relay's answer to one sent message, to be awaited with :meth:`wait`."""

    __slots__ = ("_error", "_event", "_offset")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._offset: int | None = None
        self._error: ClientError | None = None

    @property
    def done(self) -> bool:
        """The answer came (an offset or an error)."""
        return self._event.is_set()

    async def wait(self) -> int:
        """The message's offset in its channel, once the relay published it.

        Raises Closed (or ProtocolError) when the connection ended first: the message may or
        may not have been published (a 1009, 1008 or 1013 close says it was not).
        """
        await self._event.wait()
        if self._error is not None:
            raise self._error
        assert self._offset is not None
        return self._offset

    def _settle(self, offset: int | None, error: ClientError | None) -> None:
        self._offset, self._error = offset, error
        self._event.set()


@dataclass(frozen=True, slots=True)
class PublisherStatistics:
    """``published``: messages acknowledged; ``in_flight``: sent, not acknowledged yet (at
    most ``max_in_flight``)."""

    published: int
    in_flight: int
    max_in_flight: int


class Publisher:
    """A producer connection (``/ws/producer/{channel}?ack=id``); see :func:`open_publisher`.

    Messages go out in the order :meth:`send` is called, from any number of tasks, and each
    is answered in that order with its offset. Once the connection has ended, every call
    raises what ended it.
    """

    def __init__(
        self, ws: WebSocketConnection, channel: str, *, max_in_flight: int, with_token: bool
    ) -> None:
        self.channel = channel
        self._ws = ws
        self._max_in_flight = max_in_flight
        self._window = trio.Semaphore(max_in_flight)
        self._lock = trio.Lock()  # one message on the wire at a time, in ack order
        self._pending: deque[Ack] = deque()
        self._with_token = with_token
        self._ended: ClientError | None = None
        self._published = 0
        #: The keepalive, if any (each ack tells it the relay is there).
        self.liveness: Liveness | None = None

    async def publish(self, payload: Payload) -> int:
        """Publish ``payload`` (``str``: a text message, ``bytes``: binary) and return its
        offset. Blocks until the relay has published it. Raises as :meth:`send` and
        :meth:`Ack.wait` do."""
        ack = await self.send(payload)
        return await ack.wait()

    async def publish_many(self, payloads: Iterable[Payload]) -> list[int]:
        """Publish each of ``payloads`` in order, pipelined (``max_in_flight`` at a time);
        return their offsets. Raises at the first failure."""
        acks = [await self.send(payload) for payload in payloads]
        return [await ack.wait() for ack in acks]

    async def send(self, payload: Payload) -> Ack:
        """Send ``payload`` without waiting for its ack; return the :class:`Ack` to wait for.

        Blocks while ``max_in_flight`` messages await their acks, and while another task's
        message is being written. Raises TypeError for a payload neither ``str`` nor
        ``bytes``, ValueError for a text that the relay would take as a token refresh (a
        connection opened with a token), and what ended the connection once it has ended.
        A send cancelled while its message was being written leaves the publisher unusable
        (that message may or may not be on the wire, so later acks could not be matched).
        """
        if type(payload) is not str and type(payload) is not bytes:
            raise TypeError(f"a payload is str or bytes, not {type(payload).__name__}")
        if self._with_token and _is_refresh(payload):
            raise ValueError("this text would be taken as a token refresh, not published")
        if self._ended is not None:
            raise self._ended
        await self._window.acquire()
        ack = Ack()
        registered = False
        try:
            async with self._lock:
                if self._ended is not None:
                    raise self._ended
                self._pending.append(ack)
                registered = True
                await self._ws.send_message(payload)
        except ConnectionClosed as closed:
            self._end(closed_error(closed))  # ``ack`` fails with the others
        except BaseException:
            if registered:
                self._pending.remove(ack)
                self._ended = ClientError(
                    "a publish was cancelled while its message was being sent: this "
                    "publisher cannot match further acks; open another"
                )
            self._window.release()
            raise
        return ack

    def statistics(self) -> PublisherStatistics:
        """Counts of this publisher so far."""
        return PublisherStatistics(self._published, len(self._pending), self._max_in_flight)

    async def _read_acks(self) -> None:
        """Match each ack to its message until the connection ends (run in the background
        by :func:`open_publisher`); then fail what is still pending with the reason."""
        try:
            while True:
                offset = _ack_offset(await self._ws.get_message())
                if self.liveness is not None:
                    self.liveness.heard()
                if not self._pending:
                    if self._ended is not None:
                        continue  # the ack of a send cancelled mid-write
                    raise ProtocolError("an ack came for no message")
                self._pending.popleft()._settle(offset, None)
                self._published += 1
                self._window.release()
        except ConnectionClosed as closed:
            self._end(closed_error(closed))
        except ProtocolError as error:
            self._end(error)
            await self._ws.aclose(1002, "unexpected message")

    async def _refresh(self, token: Token, every_seconds: float) -> None:
        """Send a fresh token in-band every ``every_seconds`` (between messages)."""
        assert callable(token)
        with contextlib.suppress(ConnectionClosed):
            await refresh_forever(self._ws, token, every_seconds, self._lock)

    async def _watch(self, liveness: Liveness) -> None:
        """End the publisher once the relay stops answering pings (run in the background by
        :func:`open_publisher`): what is pending fails, later calls raise, and the
        connection is dropped (a send stuck on a full socket fails too)."""
        with contextlib.suppress(ConnectionClosed):
            await liveness.watch(self._ws)
            logger.info("channel %s: the relay went silent", self.channel)
            self._end(Closed(None, f"no pong within {liveness.timeout_seconds:g} s"))
            await trio.aclose_forcefully(self._ws)

    async def _drain(self) -> None:
        """Wait until every message sent so far is answered (or failed)."""
        while self._pending:
            await self._pending[-1]._event.wait()

    def _end(self, error: ClientError) -> None:
        """The connection is over: fail what is pending, refuse what comes next."""
        if self._ended is None:
            self._ended = error
        while self._pending:
            self._pending.popleft()._settle(None, error)
            self._window.release()


@contextlib.asynccontextmanager
async def open_publisher(
    url: str,
    channel: str,
    *,
    token: Token | None = None,
    max_in_flight: int = MAX_IN_FLIGHT,
    token_refresh_seconds: float | None = None,
    connect_timeout_seconds: float = CONNECT_TIMEOUT_SECONDS,
    close_timeout_seconds: float = CLOSE_TIMEOUT_SECONDS,
    ping_interval_seconds: float | None = 20.0,
    ping_timeout_seconds: float = 60.0,
) -> AsyncIterator[Publisher]:
    """A :class:`Publisher` on ``channel`` of the relay at ``url`` (``ws://``, ``http://``...).

    ``await publisher.publish(payload)`` returns the message's offset, from the relay's
    ``{"id": N}`` ack; :meth:`Publisher.send` and :meth:`Publisher.publish_many` pipeline
    up to ``max_in_flight`` messages. ``token``: a string or a provider (called once here,
    then every ``token_refresh_seconds`` for an in-band refresh, if set).

    A publisher never reconnects or publishes a message twice by itself: once its connection
    ends, each call raises Closed (``code``, ``reason``). Entering raises ConnectionFailed
    or Rejected (``status``, ``body``) when the relay cannot be reached or refuses. Leaving
    the block waits up to ``close_timeout_seconds`` for the acks still due (those still
    missing then fail with Closed), then closes with 1000.

    It pings the relay every ``ping_interval_seconds`` (None: never); a ping unanswered
    for ``ping_timeout_seconds`` with no ack meanwhile (the relay or the network went
    silent, which TCP alone takes many minutes to tell) ends it: the acks due fail with
    Closed (``code`` None). The timeout must outlast the relay's own waits: a relay whose
    channel has no room (a full queue, a ``block`` consumer) reads nothing of the producer's,
    pongs included, for up to its ``block_timeout_seconds`` (30 s by default) before it
    closes the producer with 1013 itself, which says "not published" where a keepalive's
    Closed cannot.
    """
    if max_in_flight < 1:
        raise ValueError("max_in_flight must be at least 1")
    endpoint = endpoint_url(url, f"/ws/producer/{channel}", {"ack": "id"})
    fresh = await resolve_token(token)
    try:
        async with (
            open_connection(
                endpoint,
                token=fresh,
                subprotocols=None,
                max_frame_bytes=1024,  # acks only
                connect_timeout_seconds=connect_timeout_seconds,
                close_timeout_seconds=close_timeout_seconds,
            ) as ws,
            trio.open_nursery() as nursery,
        ):
            publisher = Publisher(
                ws, channel, max_in_flight=max_in_flight, with_token=token is not None
            )
            nursery.start_soon(publisher._read_acks)
            if ping_interval_seconds is not None:
                publisher.liveness = Liveness(ping_interval_seconds, ping_timeout_seconds)
                nursery.start_soon(publisher._watch, publisher.liveness)
            if token_refresh_seconds is not None and callable(token):
                nursery.start_soon(publisher._refresh, token, token_refresh_seconds)
            try:
                yield publisher
                with trio.move_on_after(close_timeout_seconds):
                    await publisher._drain()
            finally:
                publisher._end(Closed(None, "the publisher was closed before this ack came"))
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        reraise_single(group)


async def publish(
    url: str, channel: str, payloads: Iterable[Payload], *, token: Token | None = None
) -> list[int]:
    """Publish ``payloads`` on ``channel`` in order, over one connection; return their
    offsets. Raises as :func:`open_publisher` and :meth:`Publisher.publish_many` do."""
    async with open_publisher(url, channel, token=token) as publisher:
        return await publisher.publish_many(payloads)


def _ack_offset(message: Payload) -> int:
    """N of an ``{"id": N}`` ack; ProtocolError for anything else."""
    try:
        ack = json.loads(message)
    except ValueError:
        ack = None
    if not isinstance(ack, dict) or type(ack.get("id")) is not int:
        raise ProtocolError(f"expected an ack {{'id': N}}, got {message[:80]!r}")
    offset: int = ack["id"]
    return offset


def _is_refresh(payload: Payload) -> bool:
    """Whether the relay would take ``payload`` as a token refresh (not publish it): a text
    starting ``{"triorelay"`` that is a JSON object of kind ``refresh``, as the relay reads."""
    if type(payload) is not str or not payload.startswith('{"triorelay"'):
        return False
    try:
        message = json.loads(payload)
    except ValueError:
        return False
    return isinstance(message, dict) and message.get("triorelay") == "refresh"
