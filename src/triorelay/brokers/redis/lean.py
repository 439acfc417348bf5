"""The lean path to Redis for the broadcast hot path: RESP over a trio stream, parsed by hiredis.

coredis costs about 250-300 µs of CPU per command on this project's benchmark machine (its
anyio memory streams, a writer and a reader task per connection, a request object and a
response callback per command), against 60-75 µs for the same command written with one
``send_all`` and parsed by hiredis (``docs/performance/redis/profile.md``). So the commands sent
once per message, the publish script and the reader's ``XREAD``, go through here, and so do the
notifications the reader waits for; everything else stays on coredis.

- :class:`Address`: where Redis is and how to log in, from the broker URL (coredis parses the
  credentials, the database and the TLS options, so both paths read a URL alike);
- :func:`open_stream`: one connection, logged in, with the ``run_id`` of the Redis it reached;
- :class:`Pipeline`: one connection that sends every command queued while the previous round
  trip was under way in one write, and hands each caller its own reply or error;
- :class:`Subscriber`: one pub/sub connection whose (un)subscriptions are confirmed in order.

Errors are coredis's classes, so that callers tell them apart as before: an error reply is a
:class:`coredis.exceptions.ResponseError`, a broken, refused or silent connection a
:class:`coredis.exceptions.ConnectionError`.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple
from urllib.parse import urlsplit

import coredis
import hiredis
import trio
from coredis.exceptions import ConnectionError as RedisConnectionError
from coredis.exceptions import ResponseError

from triorelay.compat.trio_waits import open_socket

__all__ = [
    "Address",
    "Encoded",
    "Pipeline",
    "RedisConnectionError",
    "RespStream",
    "ResponseError",
    "Subscriber",
    "encode_arguments",
    "encode_command",
    "open_stream",
]

#: Bytes asked for per read.
RECEIVE_BYTES: Final = 65536
#: How long a subscriber's wait past its PING's deadline still reads the socket before it takes
#: Redis for silent: long enough for a read of what is already there.
LAST_LOOK_SECONDS: Final = 0.01
#: The argument of a :class:`Pipeline` command replaced, when it is written, by the ``run_id``
#: of the Redis the connection reached.
RUN_ID: Final = object()


class Encoded(NamedTuple):
    """``arguments`` arguments already in RESP (:func:`encode_arguments`), sent as they are: the
    arguments a caller sends again and again are encoded once."""

    data: bytes
    arguments: int


Argument = bytes | str | int | Encoded


def encode_arguments(args: Sequence[bytes | str | int]) -> Encoded:
    """``args`` in RESP, to be part of commands (:class:`Encoded`)."""
    return Encoded(encode_command(args).partition(b"\r\n")[2], len(args))


def encode_command(args: Sequence[Argument]) -> bytes:
    """One command in RESP (an array of bulk strings)."""
    parts = [b""]
    append = parts.append
    count = len(args)
    for arg in args:
        if type(arg) is Encoded:
            append(arg.data)
            count += arg.arguments - 1
            continue
        data = arg if type(arg) is bytes else str(arg).encode()
        append(b"$%d\r\n" % len(data))
        append(data)
        append(b"\r\n")
    parts[0] = b"*%d\r\n" % count
    return b"".join(parts)


@dataclass(frozen=True)
class Address:
    """Where one Redis is (``redis://`` or ``rediss://``) and how to log in to it."""

    host: str
    port: int
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl_context: ssl.SSLContext | None = None

    @classmethod
    def from_url(cls, url: str) -> Address:
        """The address of a broker URL, parsed as coredis parses it."""
        kwargs = coredis.ConnectionPool.from_url(url).connection_kwargs
        parts = urlsplit(url)
        return cls(
            host=parts.hostname or "localhost",
            port=parts.port or 6379,
            db=int(kwargs.get("db") or 0),
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            ssl_context=kwargs.get("ssl_context"),
        )


class RespStream:
    """One connection to Redis: commands out, replies in, in order.

    Error replies are returned as :class:`ResponseError` objects, not raised: in a pipeline
    each belongs to its own caller. A broken connection raises :class:`RedisConnectionError`.

    Over plain TCP it does its I/O on the socket itself (``raw``): a write the socket takes
    at once (every command here, in practice) returns without a task switch, and a read
    waits for the socket to be readable first when the last read emptied it. trio's
    streams would add a scheduling round after every write and every read that did not wait,
    and a failing ``recv`` before each wait: a quarter of this path's CPU per message.
    """

    def __init__(self, stream: trio.abc.Stream, raw: socket.socket | None = None) -> None:
        self._stream = stream
        self._raw = raw
        # The last read left nothing in the socket: wait before reading again.
        self._drained = True
        self._reader = hiredis.Reader(replyError=ResponseError)
        #: The ``run_id`` of the Redis this connection reached (set by :func:`open_stream`).
        self.run_id = b""

    async def send(self, data: bytes) -> None:
        """Write ``data`` whole. Cancelled halfway, it leaves the connection unusable: close
        it then (or shield the call)."""
        raw = self._raw
        if raw is None:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
                raise RedisConnectionError(f"lost the connection to Redis: {error!r}") from None
            return
        view = memoryview(data)
        try:
            while view:
                try:
                    view = view[raw.send(view) :]
                except BlockingIOError:
                    # (open_socket: belt and braces; nothing closes raw between the send and
                    # here, but no wait here is ever on a closed socket.)
                    await trio.lowlevel.wait_writable(open_socket(raw))
        except (trio.ClosedResourceError, OSError) as error:
            raise RedisConnectionError(f"lost the connection to Redis: {error!r}") from None

    def closed_by_redis(self) -> bool:
        """Whether Redis closed the connection (or sent what nobody asked for), as far as
        the socket tells without waiting. Over TLS: never known before a read."""
        raw = self._raw
        if raw is None:
            return False
        try:
            raw.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        except OSError:
            return True
        return True  # end of file, or bytes nobody asked for

    def reply_nowait(self) -> Any:
        """The next reply already received, or ``False`` when none is whole yet."""
        return self._reader.gets()

    async def reply(self) -> Any:
        """The next reply, reading as much as it takes."""
        while True:
            reply = self._reader.gets()
            if reply is not False:
                return reply
            await self.receive()

    async def receive(self) -> None:
        """Read once from the socket (cancellable: nothing read is lost)."""
        raw = self._raw
        try:
            if raw is None:
                data = await self._stream.receive_some(RECEIVE_BYTES)
            else:
                while True:
                    if self._drained:
                        await trio.lowlevel.wait_readable(open_socket(raw))
                    try:
                        data = raw.recv(RECEIVE_BYTES)
                        break
                    except BlockingIOError:
                        self._drained = True
                self._drained = len(data) < RECEIVE_BYTES
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
            raise RedisConnectionError(f"lost the connection to Redis: {error!r}") from None
        if not data:
            raise RedisConnectionError("Redis closed the connection")
        self._reader.feed(bytes(data) if isinstance(data, bytearray) else data)

    async def call(self, *args: Argument) -> Any:
        """Send one command and return its reply; raise an error reply."""
        await self.send(encode_command(args))
        reply = await self.reply()
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def aclose(self) -> None:
        if self._raw is not None:
            trio.lowlevel.notify_closing(self._raw)
            self._raw.close()
        await trio.aclose_forcefully(self._stream)


async def open_stream(address: Address) -> RespStream:
    """Connect to ``address``, log in, select its database and learn its ``run_id``.

    Raises :class:`RedisConnectionError` if Redis cannot be reached, :class:`ResponseError`
    if it refuses the login. Bound it with a deadline: it waits as long as the network does.
    """
    try:
        tcp = await trio.open_tcp_stream(address.host, address.port)
    except OSError as error:
        raise RedisConnectionError(f"cannot connect to Redis: {error!r}") from None
    stream: trio.abc.Stream = tcp
    raw = None
    if address.ssl_context is not None:
        stream = trio.SSLStream(tcp, address.ssl_context, server_hostname=address.host)
    else:
        # A socket of our own on the same connection (trio's stays open, unused, until
        # aclose): plain socket calls through public APIs.
        raw = socket.socket(fileno=os.dup(tcp.socket.fileno()))
        raw.setblocking(False)
    resp = RespStream(stream, raw)
    try:
        if address.password is not None:
            login = [address.username, address.password] if address.username else [address.password]
            await resp.call("AUTH", *login)
        if address.db:
            await resp.call("SELECT", address.db)
        info: bytes = await resp.call("INFO", "server")
    except BaseException:
        await resp.aclose()
        raise
    for line in info.splitlines():
        if line.startswith(b"run_id:"):
            resp.run_id = line.partition(b":")[2].strip()
    return resp


class _Call:
    """One command of a :class:`Pipeline`, and what became of it."""

    __slots__ = ("abandoned", "answered", "args", "done", "error", "lead", "reply")

    def __init__(self, args: Sequence[Argument | object]) -> None:
        self.args = args
        self.done = trio.Event()
        self.answered = False
        self.reply: Any = None
        self.error: Exception | None = None
        #: Its caller was handed the round trips (``done`` is set, ``answered`` not yet).
        self.lead = False
        #: Its caller stopped waiting (cancelled): the command is sent all the same.
        self.abandoned = False

    def encode(self, run_id: bytes) -> bytes:
        return encode_command([run_id if a is RUN_ID else a for a in self.args])  # type: ignore[misc]

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.reply


class Pipeline:
    """One connection carrying the hot commands of every task of this relay.

    Every command queued while a round trip is under way goes out with the next one, in one
    write, and each caller gets its own reply (or error) in the order the commands were
    queued: concurrent publishes of several producers, on several channels, cost one round
    trip, and each producer's order is kept. The round trips are made by the callers
    themselves, one at a time (no task in between): the first caller to find none under way
    makes one, and hands the next to the first caller that queued meanwhile. A round trip is
    never cut by a cancellation (it would garble the connection for everyone), only by the
    deadline of the caller making it; a failure fails the commands of that round trip, and
    the next one connects again. :meth:`run` bounds the connection's life.
    """

    def __init__(self, address: Address) -> None:
        #: Where Redis is (other connections of the lean path go there too).
        self.address = address
        self._queue: list[_Call] = []
        self._stream: RespStream | None = None
        # A caller is making round trips.
        self._sending = False
        self._running = False
        #: Round trips made, and commands sent in them (their ratio: commands per round trip).
        self.round_trips = 0
        self.commands = 0

    async def call(self, *args: Argument | object) -> Any:
        """Queue one command and return its reply. ``RUN_ID`` among ``args`` is replaced by the
        ``run_id`` of the Redis the command is sent to (a connection never outlives its Redis).

        Call it in a scope that shields it and bounds it (``trio.CancelScope(shield=True,
        deadline=...)``): the caller may be the one making the round trip, which must not be
        cut by anything but its deadline. Cut by the deadline while it waits, the caller
        abandons the reply, not the command; cut while it makes the round trip, the
        connection is closed and that round trip's commands fail.

        Raises the error reply (:class:`ResponseError`), or :class:`RedisConnectionError` if
        the connection failed under it or :meth:`run` is not running.
        """
        if not self._running:
            raise RedisConnectionError("the connection to Redis is closed")
        call = _Call(args)
        self._queue.append(call)
        if self._sending:
            try:
                await call.done.wait()
            finally:
                # Cut by its deadline before its turn: never to be handed the round trips.
                call.abandoned = not call.done.is_set()
            if not call.lead:
                return call.result()
        self._sending = True
        try:
            while not call.answered:
                await self._round_trip()
        finally:
            self._hand_over()
        return call.result()

    def _hand_over(self) -> None:
        """Hand the next round trip to the first caller still waiting, if any."""
        for waiting in self._queue:
            if not waiting.abandoned:
                waiting.lead = True
                waiting.done.set()
                return
        self._sending = False

    async def _round_trip(self) -> None:
        """Send every queued command in one write; read their replies. Bounded by the
        caller's scope: cut by its deadline, the connection is closed and the commands not
        answered fail."""
        batch, self._queue = self._queue, []
        answered = 0
        failure: Exception | None = None
        try:
            if not self._running:
                raise RedisConnectionError("the connection to Redis is closed")
            stream = self._stream
            if stream is not None and stream.closed_by_redis():
                # Redis restarted (or dropped us) while the connection was idle: a new one,
                # rather than a failure of these commands.
                self._stream = None
                await stream.aclose()
                stream = None
            if stream is None:
                stream = self._stream = await open_stream(self.address)
            await stream.send(b"".join([c.encode(stream.run_id) for c in batch]))
            for call in batch:
                call.reply = await stream.reply()
                answered += 1
        except (RedisConnectionError, ResponseError) as error:
            failure = RedisConnectionError(f"Redis did not answer: {error!r}")
        finally:
            if answered < len(batch):  # failed, or cut by the deadline
                failure = failure or RedisConnectionError("Redis did not answer in time")
                if self._stream is not None:
                    broken, self._stream = self._stream, None
                    await broken.aclose()
                for call in batch[answered:]:
                    call.error = failure
            self.round_trips += 1
            self.commands += len(batch)
            for call in batch:
                call.answered = True
                if isinstance(call.reply, ResponseError):
                    call.error = call.reply
                call.done.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Let callers make round trips until cancelled; then close the connection."""
        self._running = True
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self._running = False
            closed = RedisConnectionError("the connection to Redis is closed")
            for call in self._queue:
                call.error = closed
                call.answered = True
                call.done.set()
            self._queue = []
            if self._stream is not None:
                stream, self._stream = self._stream, None
                await stream.aclose()


class Subscriber:
    """One pub/sub connection: (un)subscriptions confirmed in order, messages by channel.

    One task reads it: :meth:`wait_messages` returns the messages received since the last
    call, as ``(channel, data)`` in the order they came, and handles the confirmations
    meanwhile, so :meth:`subscribe` (from any task) returns once that task read its
    confirmation; :meth:`subscribe_reading` is for the reading task itself.
    :meth:`unsubscribe_nowait` (for synchronous callers) is sent by the next
    :meth:`wait_messages`. Writes are bounded by ``timeout_seconds`` and never cut by a
    cancellation (a half-written command would garble the connection).
    """

    def __init__(self, stream: RespStream, timeout_seconds: float) -> None:
        self._stream = stream
        self._timeout_seconds = timeout_seconds
        self._send_lock = trio.Lock()
        # One entry per confirmation Redis owes, in the order the commands were sent: the
        # event to set once it comes (None: nobody waits for it).
        self._owed: deque[trio.Event | None] = deque()
        self._unsubscribe: set[bytes] = set()
        self._messages: list[tuple[bytes, bytes]] = []
        self._pinged = False
        # When the answer to the PING sent is due (wakes do not move it).
        self._ping_deadline = 0.0
        # The wait of wait_messages, and whether wake() cut it.
        self._waiting: trio.CancelScope | None = None
        self._woken = False
        #: Messages received (each a notification).
        self.messages = 0

    async def subscribe(self, channels: Sequence[bytes]) -> None:
        """Subscribe to ``channels``; return once the reading task read every confirmation."""
        if channels:
            await (await self._send_subscribe(channels)).wait()

    async def subscribe_reading(self, channels: Sequence[bytes]) -> None:
        """Subscribe to ``channels`` and read until Redis confirmed every one. Messages read
        meanwhile are dropped (so that nothing grows while thousands are confirmed): the
        caller reads what they announced, and more, right after."""
        if not channels:
            return
        confirmed = await self._send_subscribe(channels)
        while not confirmed.is_set():
            await self._stream.receive()
            self._take()
            self._messages.clear()

    def unsubscribe_nowait(self, channel: bytes) -> None:
        """Unsubscribe from ``channel`` at the next :meth:`wait_messages`."""
        self._unsubscribe.add(channel)

    def keep(self, channel: bytes) -> None:
        """Cancel an unsubscription from ``channel`` not sent yet: a :meth:`subscribe` sent
        after it must not be undone by it."""
        self._unsubscribe.discard(channel)

    def wake(self) -> None:
        """Make the :meth:`wait_messages` under way return now (with what it has), or, if
        none is waiting yet (the reading task is busy, or sending an unsubscription), the
        next one: a wake is never lost."""
        self._woken = True
        if self._waiting is not None:
            self._waiting.cancel()

    async def wait_messages(self, idle_seconds: float) -> list[tuple[bytes, bytes]]:
        """Wait for messages, or :meth:`wake`; return those of one read (maybe none).

        After ``idle_seconds`` without a reply it sends ``PING`` (and returns nothing), and
        the next call raises :class:`RedisConnectionError` if nothing at all comes back within
        ``timeout_seconds`` of the PING, however often it is woken meanwhile (a partition
        leaves a connection open and silent); a wait past that time that no wake ends first
        still reads the socket for ``LAST_LOOK_SECONDS`` (the answer may be there, unread,
        if every wait since the PING was ended by a wake). Nothing read is ever lost.
        """
        if self._unsubscribe:
            channels, self._unsubscribe = sorted(self._unsubscribe), set()
            await self._send([None] * len(channels), [b"UNSUBSCRIBE", *channels])
        now = trio.current_time()
        if self._pinged:
            deadline = max(self._ping_deadline, now + LAST_LOOK_SECONDS)
        else:
            deadline = now + idle_seconds
        with trio.CancelScope(deadline=deadline) as waited:
            self._waiting = waited
            if self._woken:  # woken since the last wait ended: return with what there is
                waited.cancel()
            self._take()
            while not self._messages:
                await self._stream.receive()
                self._pinged = False
                self._take()
        self._waiting = None
        woken, self._woken = self._woken, False
        if waited.cancelled_caught and not woken:
            if self._pinged:
                raise RedisConnectionError("Redis did not answer a PING in time")
            self._pinged = True
            await self._send([None], [b"PING"])
            self._ping_deadline = trio.current_time() + self._timeout_seconds
        messages, self._messages = self._messages, []
        return messages

    async def _send_subscribe(self, channels: Sequence[bytes]) -> trio.Event:
        confirmed = trio.Event()
        await self._send([*([None] * (len(channels) - 1)), confirmed], [b"SUBSCRIBE", *channels])
        return confirmed

    async def _send(self, owed: list[trio.Event | None], command: list[bytes]) -> None:
        with trio.CancelScope(shield=True), trio.fail_after(self._timeout_seconds):
            async with self._send_lock:
                self._owed.extend(owed)
                await self._stream.send(encode_command(command))

    def _take(self) -> None:
        """Handle every reply already received: messages kept for :meth:`wait_messages`, and
        confirmations (subscribe, unsubscribe, pong) in the order they were asked for."""
        stream = self._stream
        while (reply := stream.reply_nowait()) is not False:
            if isinstance(reply, ResponseError):
                raise reply
            if reply[0] == b"message":
                self.messages += 1
                self._messages.append((reply[1], reply[2]))
            elif self._owed:
                confirmed = self._owed.popleft()
                if confirmed is not None:
                    confirmed.set()
