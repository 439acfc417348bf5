"""``python -m loadtest.baseline [--broadcast]``: serve a baseline app with uvicorn (the queue of
:mod:`loadtest.baseline.app`, or the broadcast loop of :mod:`loadtest.baseline.broadcast`).

The listening socket is bound (and listening) before uvicorn starts, and its address is printed
to stdout as one line ``listening on http://HOST:PORT`` so that a caller using ``--port 0`` can
parse the port. uvicorn's own logs go to stderr; a caller that pipes stderr must keep reading it
(or send it to a file) or the server will eventually block on a full pipe.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence

LISTEN_BACKLOG = 2048
#: The two asyncio apps, as uvicorn imports them: the queue (the default) and, with
#: ``--broadcast``, the broadcast loop.
QUEUE_APP = "loadtest.baseline.app:app"
BROADCAST_APP = "loadtest.baseline.broadcast:app"


def bind_socket(host: str, port: int) -> socket.socket:
    """Return a listening TCP socket on ``(host, port)``; ``port`` 0 picks a free port.

    The caller owns the socket (uvicorn closes it at shutdown).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, bind, announce the bound address on stdout, and serve until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.baseline",
        description="The asyncio baseline relay (FastAPI + uvicorn, one global asyncio.Queue), "
        "or with --broadcast the FastAPI tutorial's ConnectionManager broadcast loop.",
    )
    parser.add_argument(
        "--broadcast",
        action="store_true",
        help="serve the broadcast loop (every consumer gets every message: the asyncio "
        "fan-out side) instead of the queue (each message to one consumer)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["critical", "error", "warning", "info", "debug", "trace"],
        help="uvicorn log level (default: warning, so per-connection logs do not cost CPU)",
    )
    args = parser.parse_args(argv)

    import uvicorn

    sock = bind_socket(args.host, args.port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    print(f"listening on http://{shown_host}:{bound_port}", flush=True)
    config = uvicorn.Config(
        BROADCAST_APP if args.broadcast else QUEUE_APP,
        log_level=args.log_level,
        access_log=False,
        lifespan="off",
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
