"""Fixtures for the load generator's tests: a real baseline server on port 0.

``loadtest`` lives at the repository root, outside the installed package, so the root is put on
``sys.path`` here (the same thing ``python -m pytest`` from the root does).
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

#: How long the baseline may take to print its listening line.
STARTUP_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class RunningServer:
    """A server subprocess under test: its base WebSocket URL and PID."""

    url: str
    pid: int


def parse_listening_line(line: str) -> int:
    """Return the port of a ``listening on http://HOST:PORT`` line; ``ValueError`` otherwise."""
    prefix = "listening on http://"
    if not line.startswith(prefix):
        raise ValueError(f"not a listening line: {line!r}")
    return int(line.strip().rsplit(":", 1)[1])


def start_baseline(log_path: Path, *, broadcast: bool = False) -> tuple[subprocess.Popen[str], int]:
    """Start ``python -m loadtest.baseline --port 0`` (with ``--broadcast``: the broadcast
    loop) and return it with its bound port.

    Waits (with a selector timeout, not a sleep) for the listening line; stderr goes to
    ``log_path`` so a full pipe can never block the server.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    log = log_path.open("w")
    argv = [sys.executable, "-m", "loadtest.baseline", "--host", "127.0.0.1", "--port", "0"]
    proc = subprocess.Popen(
        [*argv, *(["--broadcast"] if broadcast else [])],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
    )
    log.close()
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout=STARTUP_TIMEOUT_S):
            proc.kill()
            proc.wait()
            raise RuntimeError(f"baseline did not start; see {log_path}")
    line = proc.stdout.readline()
    try:
        port = parse_listening_line(line)
    except ValueError:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"baseline failed: {log_path.read_text()[-2000:]}") from None
    return proc, port


def stop_process(proc: subprocess.Popen[str]) -> None:
    """Kill ``proc`` and reap it.

    SIGKILL, not SIGTERM: uvicorn's graceful shutdown waits for every handler, and the
    baseline's consumer handlers whose clients left stay blocked in ``queue.get()`` forever.
    """
    proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.fixture
def baseline_server(tmp_path: Path) -> Iterator[RunningServer]:
    """A fresh baseline server per test (its global queue and zombie consumers start empty)."""
    proc, port = start_baseline(tmp_path / "baseline.log")
    try:
        yield RunningServer(url=f"ws://127.0.0.1:{port}", pid=proc.pid)
    finally:
        stop_process(proc)


@pytest.fixture
def broadcast_server(tmp_path: Path) -> Iterator[RunningServer]:
    """A fresh broadcast-loop baseline per test (``python -m loadtest.baseline --broadcast``)."""
    proc, port = start_baseline(tmp_path / "broadcast.log", broadcast=True)
    try:
        yield RunningServer(url=f"ws://127.0.0.1:{port}", pid=proc.pid)
    finally:
        stop_process(proc)


@dataclass(frozen=True)
class KeyedRelay:
    """A relay that requires tokens: its base URL, PID, and the HMAC secret that signs them."""

    url: str
    pid: int
    secret: str


@pytest.fixture
def keyed_relay(tmp_path: Path) -> Iterator[KeyedRelay]:
    """A fresh ``python -m triorelay serve`` with a random HMAC secret (tokens required)."""
    from loadtest.compare.processes import start_server
    from loadtest.compare.relay import new_hmac_secret, relay_env
    from loadtest.compare.sides import MEMORY

    secret = new_hmac_secret()
    server = start_server(
        MEMORY, tmp_path / "relay.log", cpus=None, env=relay_env(auth_hmac_secret=secret)
    )
    try:
        yield KeyedRelay(url=server.url, pid=server.proc.pid, secret=secret)
    finally:
        server.stop()


@pytest.fixture
def acked_relay(tmp_path: Path) -> Iterator[RunningServer]:
    """A fresh ``python -m triorelay serve`` with the channel rules ``queue --ack explicit``
    needs: ``loadtest.queue`` a queue, ``loadtest.acked`` an acked queue."""
    import json

    from loadtest.compare.processes import start_server
    from loadtest.compare.relay import relay_env
    from loadtest.compare.sides import MEMORY
    from loadtest.scenarios import acked_queue_rules

    env = relay_env(channels=json.dumps(acked_queue_rules()))
    server = start_server(MEMORY, tmp_path / "relay.log", cpus=None, env=env)
    try:
        yield RunningServer(url=server.url, pid=server.proc.pid)
    finally:
        server.stop()
