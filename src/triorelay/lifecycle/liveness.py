"""Dead-peer detection: ping quiet connections, close the ones that stay silent."""

from __future__ import annotations

import logging
from typing import Protocol

import trio

from triorelay.compat.hypercorn import DirectWebSocket
from triorelay.errors import CloseCode
from triorelay.hub import Connection

log = logging.getLogger(__name__)


class Activity(Protocol):
    """When a connection's peer last showed it is alive."""

    @property
    def last_received(self) -> float:
        """``trio.current_time()`` of the last bytes from the peer, or now while the relay
        itself holds the peer's reading back (backpressure is not silence)."""
        ...


class _Peer:
    __slots__ = ("activity", "direct", "pinged_at")

    def __init__(self, activity: Activity, direct: DirectWebSocket) -> None:
        self.activity = activity
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

    def track(self, connection: Connection, activity: Activity, direct: DirectWebSocket) -> None:
        self._peers[connection] = _Peer(activity, direct)

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
            last_received = peer.activity.last_received
            if peer.pinged_at is not None and last_received >= peer.pinged_at:
                peer.pinged_at = None  # it answered (or sent something)
            if peer.pinged_at is None:
                if now - last_received >= interval:
                    peer.pinged_at = now
                    ping = peer.direct.ping_nowait()
                    if ping:  # written by a task of its own, under the socket's send lock
                        nursery.start_soon(peer.direct.finish_write, ping)
            elif now - peer.pinged_at >= self.timeout_seconds:
                self.forget(connection)
                log.info("closing a connection that did not answer a ping")
                connection.close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
