"""The worker process under the ``hypercorn`` CLI (Hypercorn 0.18.0, ``hypercorn/run.py``).

Shutdown is invisible to WebSocket apps. On SIGINT/SIGTERM Hypercorn stops accepting and then
waits ``graceful_timeout`` for connections to end by themselves; a WebSocket app is never told,
so every client ends up with 1006 when the deadline cancels it (Hypercorn's own lifespan
shutdown only starts after that). Under the ``hypercorn`` CLI the worker is a child process told
to stop through a ``multiprocessing.Event`` that Hypercorn polls (``hypercorn/trio/run.py:
trio_worker``, ``hypercorn/run.py``): :func:`cli_shutdown_event` finds that event so the relay
can watch it too (:func:`wait_for_cli_shutdown`) and close its clients with 1001 first.
Upstream: https://github.com/pgjones/hypercorn/issues (graceful WebSocket shutdown).
"""

from __future__ import annotations

import logging
import multiprocessing
from multiprocessing.synchronize import Event as ProcessEvent

import trio

log = logging.getLogger(__name__)


def cli_shutdown_event() -> ProcessEvent | None:
    """The event the ``hypercorn`` CLI sets to stop this worker process, if we are one."""
    kwargs = getattr(multiprocessing.current_process(), "_kwargs", None) or {}
    event = kwargs.get("shutdown_event")
    return event if isinstance(event, ProcessEvent) else None


def cli_worker_count() -> int:
    """How many worker processes the ``hypercorn`` CLI runs, if this is one of them; else 0.

    Reads the ``config`` Hypercorn passes to each worker (``hypercorn/run.py``, ``_populate``).
    """
    kwargs = getattr(multiprocessing.current_process(), "_kwargs", None) or {}
    workers = getattr(kwargs.get("config"), "workers", 0)
    return workers if isinstance(workers, int) else 0


async def wait_for_cli_shutdown(event: ProcessEvent, poll_seconds: float = 0.05) -> None:
    """Return once the Hypercorn CLI asks this worker to stop (polled, as Hypercorn does)."""
    while not event.is_set():  # noqa: ASYNC110 - a multiprocessing event cannot be awaited
        await trio.sleep(poll_seconds)
    log.info("the hypercorn supervisor asked this worker to stop")
