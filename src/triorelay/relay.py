"""The relay's app-lifetime state: settings, hub, broker, and the tasks they need.

:class:`Relay` is created by :func:`triorelay.app.create_app` and runs for the app's lifetime
in the lifespan nursery (:meth:`Relay.run`). It owns:

- the :class:`~triorelay.hub.Hub` and its broker;
- the :class:`CloseReaper`, which bounds every close the relay starts;
- the :class:`~triorelay.uploads.UploadStore` of ``/ws`` files and ``/ws/upload``;
- the shutdown watchers: signals (when the relay runs under the ``hypercorn`` CLI, not
  under ``triorelay serve``, which handles them itself) and the CLI supervisor's stop event.

:meth:`Relay.shutdown` closes every connection with 1001 at once; it is what SIGINT/SIGTERM
lead to, whichever way the relay was launched.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from typing import Any

import trio

from triorelay.brokers import broker_factory
from triorelay.compat import hypercorn as hypercorn_compat
from triorelay.compat.hypercorn import DirectWebSocket, InboundTap
from triorelay.errors import CloseCode
from triorelay.hub import Connection, Hub
from triorelay.settings import Settings
from triorelay.uploads import UploadStore

log = logging.getLogger(__name__)

SHUTDOWN_REASON = "server shutting down"


class CloseReaper:
    """Drops the socket of any connection whose close takes longer than ``timeout_seconds``.

    Hypercorn shields its socket sends (:mod:`triorelay.compat.hypercorn`), so a close frame
    to a peer that stopped reading can wait forever; cancellation cannot end it, closing the
    socket can. One task serves every connection, and costs nothing until a close starts.
    Routes :meth:`track` each connection's ``send`` for its lifetime; :meth:`abort_all` frees
    every socket still open when the relay itself is torn down.
    """

    def __init__(self, timeout_seconds: float) -> None:
        self.timeout_seconds = timeout_seconds
        self._sends: dict[object, Callable[..., Any]] = {}
        self._deadlines: dict[object, float] = {}
        self._wakeup = trio.Event()

    def track(self, key: object, send: Callable[..., Any]) -> None:
        """Remember the ``send`` of connection ``key`` until :meth:`forget`."""
        self._sends[key] = send

    def forget(self, key: object) -> None:
        """The connection ended: stop tracking it (and its clock, if armed)."""
        self._sends.pop(key, None)
        self._deadlines.pop(key, None)

    def arm(self, key: object) -> None:
        """Start the clock for ``key``'s close (no-op if running, or if ``key`` is not tracked)."""
        if key in self._sends and key not in self._deadlines:
            self._deadlines[key] = trio.current_time() + self.timeout_seconds
            self._wakeup.set()

    def abort_all(self) -> None:
        """Drop every tracked socket at once (the relay is being torn down)."""
        for key in list(self._sends):
            self._abort(key)

    def _abort(self, key: object) -> None:
        self._deadlines.pop(key, None)
        send = self._sends.pop(key, None)
        if send is not None:
            hypercorn_compat.abort_transport(send)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            now = trio.current_time()
            for key, deadline in list(self._deadlines.items()):
                if deadline <= now:
                    log.warning(
                        "close did not finish in %.1f s: dropping the socket", self.timeout_seconds
                    )
                    self._abort(key)
            self._wakeup = trio.Event()
            with trio.move_on_at(min(self._deadlines.values(), default=float("inf"))):
                await self._wakeup.wait()


class _Peer:
    __slots__ = ("direct", "pinged_at", "tap")

    def __init__(self, tap: InboundTap, direct: DirectWebSocket) -> None:
        self.tap = tap
        self.direct = direct
        self.pinged_at: float | None = None


class Liveness:
    """Pings quiet connections and closes the ones that stay silent: dead peers.

    Hypercorn's own ping only sends pings; nothing notices a peer that never answers. A
    connection that sent nothing for ``interval_seconds`` is pinged; one that then sends
    nothing for ``timeout_seconds`` more (a pong, like any byte from the peer, counts) is closed
    with 1011. A ping that a full socket cannot take counts as sent: a peer that stopped
    reading is as dead as one that stopped answering. One task serves every connection.

    It needs Hypercorn's fast path (:mod:`triorelay.compat.hypercorn`): the tap sees every byte
    from the peer, pongs included, and the direct socket writes pings. Plain ASGI has neither
    (no ping, no pong events), so connections without it (a Hypercorn whose internals changed,
    TLS terminated by Hypercorn) are not watched: :meth:`cannot_track` says so once.
    """

    def __init__(self, interval_seconds: float | None, timeout_seconds: float) -> None:
        self.interval_seconds = interval_seconds
        self.timeout_seconds = timeout_seconds
        self._peers: dict[Connection, _Peer] = {}
        self._warned = False

    def track(self, connection: Connection, tap: InboundTap, direct: DirectWebSocket) -> None:
        self._peers[connection] = _Peer(tap, direct)

    def cannot_track(self) -> None:
        """A connection runs without the fast path: warn, once, that dead peers go unnoticed."""
        if self.interval_seconds is not None and not self._warned:
            self._warned = True
            log.warning(
                "dead-peer detection is off for connections without Hypercorn's fast path "
                "(plain ASGI has no ping or pong); TCP_USER_TIMEOUT and shutdown still apply"
            )

    def forget(self, connection: Connection) -> None:
        self._peers.pop(connection, None)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        interval = self.interval_seconds
        async with trio.open_nursery() as nursery:
            task_status.started()
            if interval is None:
                return
            tick = min(interval, self.timeout_seconds) / 2
            while True:
                await trio.sleep(tick)
                self._check(nursery, interval, trio.current_time())

    def _check(self, nursery: trio.Nursery, interval: float, now: float) -> None:
        for connection, peer in list(self._peers.items()):
            last_received = peer.tap.last_received
            if peer.pinged_at is not None and last_received >= peer.pinged_at:
                peer.pinged_at = None  # it answered (or sent something)
            if peer.pinged_at is None:
                if now - last_received >= interval:
                    peer.pinged_at = now
                    rest = peer.direct.ping_nowait()
                    if rest:  # the socket took part of the frame: finish it in the background
                        nursery.start_soon(peer.direct.finish_write, rest)
            elif now - peer.pinged_at >= self.timeout_seconds:
                self.forget(connection)
                log.info("closing a connection that did not answer a ping")
                connection.close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")


class Relay:
    """Everything one relay process shares between its connections."""

    def __init__(self, settings: Settings, *, handle_signals: bool = True) -> None:
        self.settings = settings
        self.hub = Hub(settings, broker_factory(settings))
        self.reaper = CloseReaper(settings.close_timeout_seconds)
        self.liveness = Liveness(settings.ping_interval_seconds, settings.ping_timeout_seconds)
        self.uploads = UploadStore(settings.upload_dir, settings.max_upload_bytes)
        self.handle_signals = handle_signals
        self.shutting_down = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the relay's background work until cancelled.

        On the way out, any connection still open has its socket dropped: a task stuck in one
        of Hypercorn's shielded sends would otherwise outlive the app.
        """
        try:
            await self._run(task_status=task_status)
        finally:
            self.reaper.abort_all()

    async def _run(self, *, task_status: trio.TaskStatus[None]) -> None:
        await self._remove_stale_uploads()
        async with trio.open_nursery() as nursery:
            await nursery.start(self.hub.broker.run)
            await nursery.start(self.reaper.run)
            await nursery.start(self.liveness.run)
            if self.handle_signals:
                await nursery.start(self._shutdown_on_signal)
            event = hypercorn_compat.cli_shutdown_event()
            if event is not None:
                nursery.start_soon(self._shutdown_on_event, event)
            task_status.started()

    async def _remove_stale_uploads(self) -> None:
        """Remove the partial uploads a relay that died left behind (before serving)."""
        age = self.settings.stale_upload_seconds
        try:
            removed = await trio.to_thread.run_sync(self.uploads.remove_stale, age)
        except OSError as error:
            log.warning(
                "could not clean up partial uploads in %s: %s", self.uploads.directory, error
            )
            return
        if removed:
            log.info("removed %d partial uploads older than %.0f s", removed, age)

    def shutdown(self) -> None:
        """Refuse new connections and close every open one with 1001. Idempotent."""
        if not self.shutting_down:
            self.shutting_down = True
            log.info("shutting down: closing %d channels", len(self.hub))
        self.hub.close(CloseCode.GOING_AWAY, SHUTDOWN_REASON)

    async def _shutdown_on_signal(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        # Under the hypercorn CLI the worker ignores SIGINT and dies on SIGTERM; taking both
        # here makes Ctrl-C and `kill -TERM -<pgid>` close every client with 1001.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                log.info("received %s", signal.Signals(signum).name)
                self.shutdown()

    async def _shutdown_on_event(self, event: Any) -> None:
        await hypercorn_compat.wait_for_cli_shutdown(event)
        self.shutdown()
