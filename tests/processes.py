"""Relays in processes of their own, launched the ways users launch them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import psutil
import trio

STARTUP_TIMEOUT_SECONDS = 20
LAUNCHERS = {
    "hypercorn": [sys.executable, "-m", "hypercorn", "-k", "trio", "-b", "127.0.0.1:0",
                  "triorelay.app:app"],
    "serve": [sys.executable, "-m", "triorelay", "serve", "--port", "0"],
}  # fmt: skip
TWO_WORKERS = {
    "hypercorn": [*LAUNCHERS["hypercorn"][:-1], "-w", "2", LAUNCHERS["hypercorn"][-1]],
    "serve": [*LAUNCHERS["serve"], "--workers", "2"],
}
LISTENING = re.compile(rb"Running on http://127\.0\.0\.1:(\d+)")


@dataclass
class RelayProcess:
    """A relay process in its own process group; ``output`` is its stderr so far."""

    process: trio.Process
    port: int
    output: bytearray

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


async def start_relay_process(argv: Sequence[str], env: dict[str, str]) -> RelayProcess:
    """Start ``argv`` with ``env`` added to the environment; return once it listens."""
    process = await trio.lowlevel.open_process(
        list(argv),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=dict(os.environ, **env),
        start_new_session=True,  # its own process group, like a shell job
    )
    assert process.stderr is not None
    output = bytearray()
    with trio.move_on_after(STARTUP_TIMEOUT_SECONDS) as startup:
        while (match := LISTENING.search(output)) is None:
            chunk = await process.stderr.receive_some()
            assert chunk, f"the relay exited before listening: {output.decode()}"
            output += chunk
    if startup.cancelled_caught:
        os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        raise AssertionError(f"the relay did not start listening: {output.decode()!r}")
    assert match is not None
    return RelayProcess(process, int(match.group(1)), output)


def kill_group(relay: RelayProcess) -> None:
    """SIGKILL the relay's whole process group (workers included), if still running."""
    if relay.process.returncode is None:
        os.killpg(relay.process.pid, signal.SIGKILL)


@asynccontextmanager
async def relay_process(argv: Sequence[str], env: dict[str, str]) -> AsyncIterator[RelayProcess]:
    """:func:`start_relay_process` for the block; the process group is killed after it."""
    relay = await start_relay_process(argv, env)
    try:
        yield relay
    finally:
        kill_group(relay)
        await relay.process.wait()


def worker_serving(workers: list[psutil.Process], client_port: int) -> int:
    """The pid of the worker holding the server side of the connection from ``client_port``."""
    for worker in workers:
        for connection in worker.net_connections(kind="tcp"):
            if connection.raddr and connection.raddr.port == client_port:
                return worker.pid
    raise AssertionError(f"no worker serves the connection from port {client_port}")
