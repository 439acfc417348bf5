"""What triorelay needs from Hypercorn 0.18.0's trio worker that its public API does not give.

One module per job, each naming the Hypercorn code and upstream issue it works around:

- :mod:`.process`: the ``hypercorn`` CLI's worker process: its shutdown event and worker count.
- :mod:`.sockets`: one connection's socket: abort it, ``TCP_USER_TIMEOUT``, closed or not,
  refuse compression, the peer's close frame.
- :mod:`.direct`: :class:`DirectWebSocket`, batched writes of the relay's own frames.
- :mod:`.tap`: :class:`InboundTap`, inbound messages parsed in Hypercorn's reader task.
- :mod:`.isolation`: one connection's failure kept from ending the server (hypercorn#225).
- :mod:`.reads`: one connection's read loop without a cancel scope and a failed ``recv`` per
  read.
- :mod:`.app_queue`: each app's ASGI events in one small object, not a memory channel pair.
- :mod:`.upgrade`: the HTTP/1.1 handshake's state let go once the WebSocket is accepted,
  and wsproto's event queue made a list.

The frames themselves are the relay's own code, in :mod:`triorelay.wire`. Every helper returns
``None`` / does nothing when Hypercorn's structure is not the expected one, and
``tests/compat/hypercorn/`` checks that structure against the pinned version. Callers use the
names re-exported here (``hypercorn_compat.open_direct(...)``), which tests may replace.
"""

from triorelay.compat.hypercorn.app_queue import use_app_queues
from triorelay.compat.hypercorn.direct import DirectWebSocket, open_direct
from triorelay.compat.hypercorn.isolation import isolate_connection_errors
from triorelay.compat.hypercorn.process import (
    cli_shutdown_event,
    cli_worker_count,
    wait_for_cli_shutdown,
)
from triorelay.compat.hypercorn.sockets import (
    PeerClose,
    abort_transport,
    is_closed,
    refuse_compression,
    set_user_timeout,
    transport_of,
    watch_peer_close,
)
from triorelay.compat.hypercorn.tap import InboundTap, OnInvalid, OnMessages, tap_inbound
from triorelay.compat.hypercorn.upgrade import release_handshake

__all__ = [
    "DirectWebSocket",
    "InboundTap",
    "OnInvalid",
    "OnMessages",
    "PeerClose",
    "abort_transport",
    "cli_shutdown_event",
    "cli_worker_count",
    "is_closed",
    "isolate_connection_errors",
    "open_direct",
    "refuse_compression",
    "release_handshake",
    "set_user_timeout",
    "tap_inbound",
    "transport_of",
    "use_app_queues",
    "wait_for_cli_shutdown",
    "watch_peer_close",
]
