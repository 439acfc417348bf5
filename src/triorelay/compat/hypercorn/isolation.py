"""Keep one connection's failure inside it (Hypercorn 0.18.0's trio worker).

https://github.com/pgjones/hypercorn/issues/225: an exception from one connection escapes into
the handler nursery shared by all of them and ends the server. :func:`isolate_connection_errors`
also has the worker read as :mod:`.reads` does (``ReadLoop`` is the one TCPServer class the
worker can be given).
"""

from __future__ import annotations

import logging
from types import TracebackType

from hypercorn.trio import run as run_module
from hypercorn.trio import tcp_server as tcp_server_module
from hypercorn.trio.task_group import TaskGroup

from triorelay.compat.hypercorn.app_queue import AppTaskGroup
from triorelay.compat.hypercorn.reads import ReadLoop

log = logging.getLogger(__name__)


def isolate_connection_errors() -> None:
    """Keep one connection's failure from taking the whole server down. Idempotent.

    Hypercorn 0.18's trio worker runs every connection in one handler nursery, and lets an
    exception from a connection escape into it: an upgrade request followed by more bytes in
    the same write makes h11 fail inside the app's ``accept`` and again in Hypercorn's own
    cleanup, which ends the server (https://github.com/pgjones/hypercorn/issues/225).
    Every connection's work (its read loop and its app's task) runs inside the ``async with
    TaskGroup()`` of ``TCPServer.run``, which looks ``TaskGroup`` up in
    ``hypercorn.trio.tcp_server`` when a connection starts: :class:`IsolatedTaskGroup` there
    ends the failure at that block, and ``run`` closes the connection as it does after any
    end. ``worker_serve`` looks ``TCPServer`` up in ``hypercorn.trio.run`` when it serves, so
    replacing both before serving (what ``create_app`` does) covers both ``hypercorn -k trio``
    and ``triorelay serve``.
    """
    if getattr(run_module, "TCPServer", None) is not ReadLoop:
        setattr(run_module, "TCPServer", ReadLoop)  # noqa: B010 - not re-exported
    if getattr(tcp_server_module, "TaskGroup", None) in (TaskGroup, AppTaskGroup):
        setattr(tcp_server_module, "TaskGroup", IsolatedTaskGroup)  # noqa: B010


class IsolatedTaskGroup(AppTaskGroup):
    """A connection's task group (its app's events in an :class:`AppQueue`), whose failures
    end only that connection.

    Caught as the block ends rather than by a wrapper around ``TCPServer.run``: a wrapper's
    coroutine frame would be held by every connection for its life (0.3 KB).
    """

    #: Set once the block has ended, every task of the connection done: ``TCPServer.run``
    #: then only closes the stream (what ``ReadLoop._close`` waits for).
    ended = False

    async def __aexit__(  # type: ignore[override]
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:  # Hypercorn's returns None: it never suppresses
        failed = False
        try:
            await super().__aexit__(exc_type, exc_value, tb)  # type: ignore[arg-type]
        except* Exception as failure:
            log.warning(
                "dropped a connection after an error in the server: %s",
                "; ".join(repr(error) for error in failure.exceptions),
            )
            failed = True
        finally:
            self.ended = True  # every task of the connection is done (ReadLoop._close)
        return failed  # True: the failure ends here; anything else (Cancelled) went on
