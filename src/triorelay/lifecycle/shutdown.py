"""Shutdown: one entry point, :meth:`Shutdown.begin`, whatever asks for it.

What asks: SIGINT/SIGTERM (:func:`watch_signals`: under the ``hypercorn`` CLI the app takes
them; ``triorelay serve`` takes them itself and calls the same entry), the ``hypercorn``
supervisor's stop event (:func:`watch_supervisor`), and the app's lifespan ending. Beginning is
idempotent and does not wait: new connections are refused at once and every open one is asked
to close with 1001 ``server shutting down``; each connection's route sends its close, bounded by
the close reaper, and Hypercorn's ``graceful_timeout`` bounds the rest.
"""

from __future__ import annotations

import logging
import signal
from multiprocessing.synchronize import Event as ProcessEvent

import trio

from triorelay.compat import hypercorn as hypercorn_compat
from triorelay.errors import CloseCode
from triorelay.hub import Hub

log = logging.getLogger(__name__)

SHUTDOWN_REASON = "server shutting down"


class Shutdown:
    """The relay's one way to shut down: :meth:`begin`, then :meth:`wait` returns."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._begun = trio.Event()

    @property
    def begun(self) -> bool:
        return self._begun.is_set()

    def begin(self, why: str = "") -> None:
        """Refuse new connections and close every open one with 1001. Idempotent."""
        if not self._begun.is_set():
            self._begun.set()
            log.info(
                "shutting down%s: closing %d channels", f" ({why})" if why else "", len(self._hub)
            )
        self._hub.close(CloseCode.GOING_AWAY, SHUTDOWN_REASON)

    async def wait(self) -> None:
        """Return once :meth:`begin` was called (Hypercorn's ``shutdown_trigger``)."""
        await self._begun.wait()


async def watch_signals(
    shutdown: Shutdown, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Begin the shutdown on SIGINT or SIGTERM, until cancelled.

    Under the hypercorn CLI the worker ignores SIGINT and dies on SIGTERM; taking both here
    makes Ctrl-C and ``kill -TERM -<pgid>`` close every client with 1001.
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            shutdown.begin(f"received {signal.Signals(signum).name}")


async def watch_supervisor(shutdown: Shutdown, event: ProcessEvent) -> None:
    """Begin the shutdown when the ``hypercorn`` supervisor asks this worker to stop."""
    await hypercorn_compat.wait_for_cli_shutdown(event)
    shutdown.begin("the hypercorn supervisor asked this worker to stop")
