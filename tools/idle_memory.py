"""What an idle WebSocket connection costs the relay, and whose objects it is.

Runs a server in this process under :mod:`tracemalloc`, opens ``--connections`` idle
WebSocket connections to it from a child process (raw sockets: one handshake each, then
silence), and prints per connection: the Python memory allocated while they connected and
still held, grouped by the package that allocated it (``hypercorn``, ``wsproto``, ``h11``,
``trio``, ``triorelay`` ...), the top allocation sites, the objects ``gc`` tracks by type, and
the process's RSS growth for context. ``--app`` picks the server:

- ``relay``: the relay as ``triorelay serve`` runs it (``Settings()`` from the environment);
- ``bare``: Hypercorn's trio worker with a do-nothing ASGI app that accepts the WebSocket and
  waits for its end, the serving stack's own floor.

Example, from the repository's root (1,000 idle producers on the relay, then the floor)::

    python -m tools.idle_memory --app relay --role producer --connections 1000
    python -m tools.idle_memory --app bare --connections 1000

tracemalloc's own bookkeeping inflates RSS, so the RSS figure here is only for comparing the
two apps; ``python -m loadtest connections`` measures RSS per connection without it.
"""

from __future__ import annotations

import argparse
import base64
import collections
import gc
import json
import os
import socket
import subprocess
import sys
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psutil
import trio
import trio.testing

from loadtest.limits import raise_fd_limit

REPO_ROOT = Path(__file__).resolve().parents[1]
HANDSHAKE = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def hold(port: int, path: str, count: int) -> None:
    """The child: open ``count`` WebSocket connections, print ``ready``, hold them until stdin
    closes (blocking sockets: nothing in the parent's process is spent on clients)."""
    held = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(HANDSHAKE.format(path=path, port=port, key=key).encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                raise SystemExit(f"connection closed during the handshake: {answer!r}")
            answer += chunk
        if not answer.startswith(b"HTTP/1.1 101"):
            raise SystemExit(f"handshake refused: {answer.splitlines()[0]!r}")
        held.append(sock)
    print("ready", flush=True)
    sys.stdin.read()


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Scope]]
Send = Callable[[Scope], Awaitable[None]]


async def bare_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Accept a WebSocket and wait for its end; answer lifespan."""
    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
        elif event["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif event["type"] == "websocket.disconnect":
            return


def package_of(filename: str) -> str:
    """The package a source file belongs to: the folder under site-packages, ``triorelay``,
    or ``stdlib:<module>``."""
    parts = filename.replace("\\", "/").split("/")
    for marker in ("site-packages", "src"):
        if marker in parts:
            return parts[parts.index(marker) + 1].removesuffix(".py")
    return "stdlib:" + parts[-1].removesuffix(".py")


def type_counts() -> collections.Counter[str]:
    gc.collect()
    return collections.Counter(type(o).__qualname__ for o in gc.get_objects())


def all_tasks() -> list[trio.lowlevel.Task]:
    """Every live trio task (``gc`` tracks them all)."""
    return [obj for obj in gc.get_objects() if isinstance(obj, trio.lowlevel.Task)]


def task_stacks() -> collections.Counter[tuple[str, ...]]:
    """Every live trio task's await chain (coroutine and generator names, outermost first),
    counted: an idle connection's tasks and how deep each waits."""
    stacks: collections.Counter[tuple[str, ...]] = collections.Counter()
    for task in all_tasks():
        chain: list[str] = []
        frame: Any = task.coro
        while frame is not None:
            chain.append(getattr(frame, "__qualname__", type(frame).__qualname__))
            frame = getattr(frame, "cr_await", None) or getattr(frame, "gi_yieldfrom", None)
        stacks[tuple(chain)] += 1
    return stacks


async def measure(app_name: str, role: str, count: int, top: int) -> dict[str, Any]:
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    if app_name == "relay":
        from triorelay.server import serve
        from triorelay.settings import Settings

        settings = Settings(
            host="127.0.0.1",
            port=0,
            max_connections=count + 100,
            max_connections_per_client=count + 100,
        )
    process = psutil.Process()
    async with trio.open_nursery() as nursery:
        if app_name == "relay":
            binds = await nursery.start(serve, settings)
        else:
            config = Config()
            config.bind = ["127.0.0.1:0"]
            config.websocket_ping_interval = None
            config.accesslog = None
            binds = await nursery.start(
                lambda task_status: hypercorn_serve(bare_app, config, task_status=task_status)  # type: ignore[arg-type]
            )
        port = int(binds[0].rsplit(":", 1)[1])
        # Warm up: the first connection's imports and caches are not per connection.
        async with holding(port, role, 20):
            pass
        # ...and wait until the server has let go of them.
        await trio.testing.wait_all_tasks_blocked(0.05)
        tasks_before = len(all_tasks())
        before_types = type_counts()
        before = tracemalloc.take_snapshot()
        rss_before = process.memory_info().rss
        async with holding(port, role, count):
            # Every handshake is answered: let every handler reach its idle wait.
            await trio.testing.wait_all_tasks_blocked(0.05)
            after_types = type_counts()
            stacks = task_stacks()
            tasks_after = len(all_tasks())
            after = tracemalloc.take_snapshot()
            rss_after = process.memory_info().rss
        nursery.cancel_scope.cancel()

    by_package: collections.Counter[str] = collections.Counter()
    for stat in after.compare_to(before, "filename"):
        by_package[package_of(stat.traceback[0].filename)] += stat.size_diff
    sites = after.compare_to(before, "lineno")[:top]
    types = after_types - before_types
    return {
        "app": app_name,
        "role": role,
        "connections": count,
        "python_bytes_per_connection": round(sum(by_package.values()) / count, 1),
        "by_package": {k: round(v / count, 1) for k, v in by_package.most_common() if v > 0},
        "top_sites": [
            {"site": f"{frame.filename}:{frame.lineno}", "bytes": round(s.size_diff / count, 1)}
            for s in sites
            for frame in [s.traceback[-1]]
        ],
        "gc_objects_per_connection": {
            k: round(v / count, 2) for k, v in types.most_common(40) if v >= count // 2
        },
        "tasks_per_connection": round((tasks_after - tasks_before) / count, 3),
        "task_stacks": [
            {"tasks": n, "stack": stack} for stack, n in stacks.most_common() if n >= count // 2
        ],
        "rss_bytes_per_connection_with_tracemalloc": round((rss_after - rss_before) / count, 1),
    }


@asynccontextmanager
async def holding(port: int, role: str, count: int) -> AsyncIterator[None]:
    """A child process holding ``count`` idle connections (:func:`hold`) for the block: entered
    once all are accepted, left once the child has closed them and ended."""
    command = [sys.executable, "-m", "tools.idle_memory", "--hold", str(port), "--role", role]
    child = await trio.lowlevel.open_process(
        [*command, f"--connections={count}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    assert child.stdout is not None
    assert child.stdin is not None
    try:
        line = b""
        while not line.endswith(b"\n"):
            chunk = await child.stdout.receive_some(64)
            if not chunk:
                raise SystemExit("the client process ended before it was ready")
            line += chunk
        yield
    finally:
        await child.stdin.aclose()
        await child.wait()
        await child.stdout.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    description = __doc__.split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m tools.idle_memory", description=description)
    parser.add_argument("--app", choices=("relay", "bare"), default="relay")
    parser.add_argument("--role", choices=("producer", "consumer"), default="producer")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--top", type=int, default=25, help="allocation sites to list")
    parser.add_argument("--hold", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    path = f"/ws/{args.role}"
    if args.hold is not None:
        hold(args.hold, path, args.connections)
        return 0
    # Imported before tracing starts: tracing them is slow, and they are no connection's.
    import triorelay.server
    import triorelay.settings  # noqa: F401

    tracemalloc.start()
    raise_fd_limit(2 * args.connections + 256)
    result = trio.run(measure, args.app, args.role, args.connections, args.top)
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
