"""The close reaper: every close the relay starts is bounded in time."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from triorelay.compat import hypercorn as hypercorn_compat

log = logging.getLogger(__name__)


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
