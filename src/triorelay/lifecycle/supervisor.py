"""Supervision of the relay's own background tasks: none dies silently.

Every relay-lifetime task (the broker's reader, the close reaper, liveness) runs under
:meth:`Supervisor.run`. An unexpected exception in one (not a cancellation) is logged with its
traceback, counted, and the task is started again after a delay that doubles from
``BASE_SECONDS`` to ``CAP_SECONDS`` (reset once it has run for ``CAP_SECONDS``). While a task
is down, :attr:`Supervisor.healthy` is False and ``/healthz`` answers 503, so a load balancer
stops sending clients to a relay that would serve them half-dead.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

log = logging.getLogger(__name__)

Task = Callable[..., Awaitable[None]]
"""``await task(task_status=...)``: a task that calls ``task_status.started()`` once ready."""

BASE_SECONDS = 0.05
CAP_SECONDS = 5.0


@dataclass
class TaskState:
    """One supervised task: whether it runs, how often it failed, and the last failure.

    ``down``: it failed and has not started again yet (a task that ended by itself is not).
    """

    running: bool = False
    restarts: int = 0
    last_error: str | None = None
    down: bool = False


class Supervisor:
    """Runs named background tasks and restarts the ones that fail."""

    def __init__(self) -> None:
        self.tasks: dict[str, TaskState] = {}

    @property
    def healthy(self) -> bool:
        """False while a supervised task is down (failed, not yet running again)."""
        return not any(state.down for state in self.tasks.values())

    async def run(
        self,
        name: str,
        task: Task,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run ``task`` until it returns or this is cancelled, restarting it after a failure.

        ``task_status.started()`` is passed on the first time ``task`` is ready.
        """
        state = self.tasks.setdefault(name, TaskState())
        delay = BASE_SECONDS
        first = True
        while True:
            began = trio.current_time()
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(task)
                    state.running, state.down = True, False
                    if first:
                        first = False
                        task_status.started()
                state.running = False
                return
            except Exception as error:
                state.running, state.down = False, True
                state.restarts += 1
                state.last_error = _describe(error)
                log.exception("relay task %r failed (restart %d)", name, state.restarts)
            if trio.current_time() - began >= CAP_SECONDS:
                delay = BASE_SECONDS
            await trio.sleep(delay)
            delay = min(delay * 2, CAP_SECONDS)

    def statistics(self) -> dict[str, Any]:
        return {
            name: {"running": s.running, "restarts": s.restarts, "last_error": s.last_error}
            for name, s in self.tasks.items()
        }


def _describe(error: BaseException) -> str:
    """``Type: message`` of the one error inside nested single-error groups."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return f"{type(error).__name__}: {error}"
