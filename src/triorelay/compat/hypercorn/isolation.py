"""Keep one connection's failure inside it (Hypercorn 0.18.0's trio worker).

https://github.com/pgjones/hypercorn/issues/225: an exception from one connection escapes into
the handler nursery shared by all of them and ends the server. The replacement class also reads
as :mod:`.reads` does (it is the one TCPServer subclass the worker can be given).
"""

from __future__ import annotations

import logging

import trio
from hypercorn.trio import run as run_module

from triorelay.compat.hypercorn.reads import ReadLoop

log = logging.getLogger(__name__)


def isolate_connection_errors() -> None:
    """Keep one connection's failure from taking the whole server down. Idempotent.

    Hypercorn 0.18's trio worker runs every connection in one handler nursery, and lets an
    exception from a connection escape into it: an upgrade request followed by more bytes in
    the same write makes h11 fail inside the app's ``accept`` and again in Hypercorn's own
    cleanup, which ends the server (https://github.com/pgjones/hypercorn/issues/225).
    ``worker_serve`` looks ``TCPServer`` up in ``hypercorn.trio.run`` when it serves, so
    replacing it there before serving (what ``create_app`` does) covers both
    ``hypercorn -k trio`` and ``triorelay serve``.
    """
    if getattr(run_module, "TCPServer", None) is not _IsolatedTCPServer:
        setattr(run_module, "TCPServer", _IsolatedTCPServer)  # noqa: B010 - not re-exported


class _IsolatedTCPServer(ReadLoop):
    """Hypercorn's TCPServer, whose failures end only their own connection (and which reads
    as :class:`~triorelay.compat.hypercorn.reads.ReadLoop` does)."""

    async def run(self) -> None:
        try:
            await super().run()
        except* Exception as failure:
            log.warning(
                "dropped a connection after an error in the server: %s",
                "; ".join(repr(error) for error in failure.exceptions),
            )
            await trio.aclose_forcefully(self.stream)
