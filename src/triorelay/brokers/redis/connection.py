"""The Redis broker's connection to Redis: its clients, (re)connecting, readiness, errors.

One :class:`RedisConnection` per broker, shared by broadcast (:mod:`.streams`) and queue mode
(:mod:`.queues`) through a small public API:

- the clients: :attr:`~RedisConnection.client` for every short command (coredis multiplexes
  them on a few connections), and :meth:`~RedisConnection.blocking` for a queue consumer's
  blocking read, which holds a connection of its own while it waits: at most
  ``redis_max_blocking_connections`` at once, the others wait their turn;
- key names (:meth:`~RedisConnection.key`), this relay's name in Redis
  (:attr:`~RedisConnection.node`), the keys' time to live (:attr:`~RedisConnection.ttl_ms`);
- deadlines and errors: :meth:`~RedisConnection.deadline` bounds a command by
  ``broker_timeout_seconds``; :meth:`~RedisConnection.failing_as_unavailable` also turns a
  failure into :class:`~triorelay.errors.BrokerUnavailable`; :meth:`~RedisConnection.note_error`
  keeps the last error for ``/healthz``;
- readiness: :attr:`~RedisConnection.ready`, :meth:`~RedisConnection.wait_ready`, and
  :meth:`~RedisConnection.keep_connected`, which connects, runs the broker's reader, and
  reconnects with a :class:`Backoff` when Redis fails, for as long as the broker runs;
- restarts: :meth:`~RedisConnection.check_restarted` compares Redis's ``run_id`` with the
  last one seen (a restarted Redis lost what it held).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

import coredis
import coredis.exceptions
import trio

from triorelay.compat.coredis import is_out_of_memory, open_client
from triorelay.errors import BrokerUnavailable

if TYPE_CHECKING:
    from triorelay.settings import Settings

log = logging.getLogger(__name__)


class ConnectionLost(BrokerUnavailable):
    """A command failed because its connection to Redis broke (not a timeout, not a refusal)."""


#: Errors of a connection that broke under a command (as opposed to Redis refusing it).
CONNECTION_ERRORS = (coredis.exceptions.ConnectionError, OSError)

#: Shortest time between two connection attempts, however many clients want Redis.
RETRY_MIN_SECONDS = 0.05

#: What a lost or refused Redis connection raises (coredis, trio's deadlines, the OS).
REDIS_ERRORS = (coredis.exceptions.RedisError, TimeoutError, trio.TooSlowError, OSError)

#: The part of :data:`REDIS_ERRORS` that says Redis is unavailable: its connection broke or
#: would not open (``LOADING`` included), or it did not answer within a deadline. Worth
#: retrying once it is back; the rest is Redis refusing the command (a script error, a key of
#: the wrong type, ``OOM``), which a retry would only repeat.
UNAVAILABLE_ERRORS = (*CONNECTION_ERRORS, trio.TooSlowError)


class Backoff:
    """Reconnection delays: ``base``, doubling per failure up to ``cap``; :meth:`reset` after
    a success."""

    def __init__(self, base: float, cap: float) -> None:
        self.base = base
        self.cap = cap
        self._next = base

    def next(self) -> float:
        """The delay before the next attempt."""
        delay = min(self._next, self.cap)
        self._next = min(self._next * 2, self.cap)
        return delay

    def reset(self) -> None:
        self._next = self.base


class RedisConnection:
    """The broker's clients for one Redis, and what is known of that Redis's state.

    The clients connect inside :meth:`open`; :meth:`keep_connected` (inside it) decides
    readiness. Nothing here is per channel.
    """

    def __init__(self, settings: Settings) -> None:
        self.url = settings.broker
        self.timeout_seconds = settings.broker_timeout_seconds
        #: The expiry the broker renews on its keys at each publish, in milliseconds (a string,
        #: as scripts take it).
        self.ttl_ms = str(max(1, round(settings.redis_stream_ttl_seconds * 1000)))
        self._prefix = settings.redis_key_prefix
        #: This relay's name in Redis (its queue consumers).
        self.node = uuid.uuid4().hex
        self._backoff = Backoff(0.05, settings.broker_reconnect_max_seconds)
        self.client = open_client(self.url, connect_timeout=self.timeout_seconds)
        # For the queue consumers' blocking reads, each of which holds a connection while it
        # waits: apart, so that they can never take the connections publishes need. Bounded
        # here, in the open (FIFO, outside any command's deadline), rather than by the pool
        # alone, whose wait would count against the read's deadline and fail it as an outage.
        self._max_blocking = settings.redis_max_blocking_connections
        self._blocking_slots = trio.Semaphore(self._max_blocking)
        self._blocking_client = open_client(
            self.url, connect_timeout=self.timeout_seconds, max_connections=self._max_blocking
        )
        self._run_id: str | None = None
        self._ready = False
        self._ready_changed = trio.Event()
        self._wanted = trio.Event()
        self.reconnects = 0
        #: Writes Redis refused at ``maxmemory`` (each closed its producer with 1013 / 503).
        self.out_of_memory = 0
        self.last_error: str | None = None

    def key(self, kind: str, name: str) -> str:
        """The Redis key of ``kind`` (``ch``, ``meta``, ``q``, ``qseq``; ``n``: a notification
        channel) for ``name``."""
        return f"{self._prefix}{kind}:{name}"

    # -- commands --

    @asynccontextmanager
    async def blocking(self) -> AsyncIterator[coredis.Redis[bytes]]:
        """The client for one blocking command, which holds a connection until it returns.

        Waits, first come first served, while ``redis_max_blocking_connections`` blocking
        commands are under way (counted in :meth:`statistics`). Start the command's deadline
        inside the block, so that the wait for a turn does not count against it.
        """
        async with self._blocking_slots:
            yield self._blocking_client

    def deadline(self, extra_seconds: float = 0.0) -> AbstractContextManager[trio.CancelScope]:
        """``trio.fail_after`` for one command: ``broker_timeout_seconds`` (plus
        ``extra_seconds``, the time a blocking command may wait on purpose)."""
        return trio.fail_after(self.timeout_seconds + extra_seconds)

    @contextmanager
    def failing_as_unavailable(self, what: str) -> Iterator[None]:
        """Bound the block by ``broker_timeout_seconds``; Redis errors become
        :class:`BrokerUnavailable` (the message says nothing was published)."""
        try:
            with self.deadline():
                yield
        except REDIS_ERRORS as error:
            raise self.unavailable(what, error) from None

    def unavailable(self, what: str, error: BaseException) -> BrokerUnavailable:
        """What :meth:`failing_as_unavailable` raises for ``error`` (one of
        :data:`REDIS_ERRORS`), noted for ``/healthz``, for the callers that bound their
        command themselves."""
        self.note_error(f"{what}: {error}")
        if isinstance(error, CONNECTION_ERRORS):
            # The connection is gone: say so at once (the reader may not know yet), so
            # that whoever retries waits for the reconnection.
            self._lost(error)
            return ConnectionLost("the broker is unavailable: message not published")
        if is_out_of_memory(error):
            # Redis is up but at maxmemory: say so, and count it (not an outage).
            self.out_of_memory += 1
            return BrokerUnavailable(
                "the broker is out of memory (Redis maxmemory): message not published"
            )
        return BrokerUnavailable("the broker is unavailable: message not published")

    def note_error(self, error: str) -> None:
        """Remember the last Redis error (``/healthz``)."""
        self.last_error = error

    # -- connecting --

    @asynccontextmanager
    async def open(self) -> AsyncIterator[None]:
        """Own the clients (and their connections) for the ``async with`` block."""
        async with self.client, self._blocking_client:
            yield

    async def keep_connected(
        self,
        serve: Callable[[bool], Awaitable[None]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Connect, then ``await serve(restarted)`` until it raises a Redis error; reconnect
        after a :class:`Backoff` delay; until cancelled. Call it inside :meth:`open`.

        ``restarted``: Redis restarted since the previous connection (see
        :meth:`check_restarted`). Started after the first connection attempt, successful or
        not (bounded by ``broker_timeout_seconds``), so the relay serves at once, answering
        ``/healthz`` with 503 while Redis is down.
        """
        started = False
        try:
            while True:
                try:
                    restarted = await self.check_restarted()
                    self._set_ready(True)
                    self._backoff.reset()
                    log.info("connected to the Redis broker at %s", self.safe_url)
                    if not started:
                        started = True
                        task_status.started()
                    await serve(restarted)
                except REDIS_ERRORS as error:
                    self._lost(error)
                if not started:
                    started = True
                    task_status.started()
                await self._until_next_attempt(self._backoff.next())
        finally:
            self._set_ready(False)

    async def _until_next_attempt(self, delay: float) -> None:
        """Wait ``delay``, or less once a client wants Redis (:meth:`want_ready`), but never
        less than ``RETRY_MIN_SECONDS`` between two attempts."""
        with trio.move_on_after(delay):
            await trio.sleep(min(delay, RETRY_MIN_SECONDS))
            await self._wanted.wait()
        self._wanted = trio.Event()

    def want_ready(self) -> None:
        """A client needs Redis now: try to reconnect without waiting out the backoff."""
        self._wanted.set()

    async def until_ready(self) -> bool:
        """Wait for Redis at most ``broker_timeout_seconds`` (asking for a reconnection at
        once); True once connected. A short outage is thus waited out, not reported."""
        if self._ready:
            return True
        self.want_ready()
        with trio.move_on_after(self.timeout_seconds):
            await self.wait_ready()
        return self._ready

    @property
    def run_id(self) -> str | None:
        """The ``run_id`` of the Redis last connected to (a new one: it restarted)."""
        return self._run_id

    async def check_restarted(self) -> bool:
        """Ask Redis its ``run_id``: True if it changed since the last time (a restart)."""
        with self.deadline():
            info: Any = await self.client.info("server")
        run_id = str(info["run_id"])
        restarted = self._run_id is not None and run_id != self._run_id
        self._run_id = run_id
        return restarted

    def _lost(self, error: BaseException) -> None:
        if self._ready:
            log.warning("lost the Redis broker (%s): reconnecting", error)
            self.reconnects += 1
        self._set_ready(False)
        self.note_error(str(error) or type(error).__name__)

    # -- state --

    @property
    def ready(self) -> bool:
        """Connected: the last command (or connection attempt) succeeded."""
        return self._ready

    def _set_ready(self, ready: bool) -> None:
        if ready != self._ready:
            self._ready = ready
            self._ready_changed.set()
            self._ready_changed = trio.Event()

    async def wait_ready(self, ready: bool = True) -> None:
        """Wait until :attr:`ready` is ``ready`` (connected, or known to be disconnected)."""
        while self._ready != ready:
            await self._ready_changed.wait()

    @property
    def safe_url(self) -> str:
        """The URL without its password, for logs and statistics."""
        scheme, _, rest = self.url.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2]}"

    def statistics(self) -> dict[str, Any]:
        return {
            "url": self.safe_url,
            "ready": self._ready,
            "reconnects": self.reconnects,
            "out_of_memory": self.out_of_memory,
            "blocking_reads": self._max_blocking - self._blocking_slots.value,
            "blocking_reads_waiting": self._blocking_slots.statistics().tasks_waiting,
            "last_error": self.last_error,
        }
