"""Processes for ``python -m loadtest compare``: fresh servers and generator runs, CPU-pinned.

Blocking and synchronous: the comparison runner only starts processes and waits for them.
Servers announce their port on stdout or stderr (``listening on http://...`` for the baseline,
``Running on http://...`` for Hypercorn); reader threads copy both streams into a log file so a
full pipe never blocks a server.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import psutil  # type: ignore[import-untyped]

REPO_ROOT: Final = Path(__file__).resolve().parents[1]
#: How long a server may take to announce its port and answer a request.
STARTUP_TIMEOUT_S: Final = 30.0
_PORT_RE: Final = re.compile(r"(?:Running on|listening on) http://[^\s:]+:(\d+)")


def pinning() -> tuple[set[int], set[int]] | None:
    """Return ``(server CPUs, generator CPUs)``: CPU 0 and CPU 1 of the ones this process may use,
    or ``None`` with fewer than two (then nothing is pinned and the report says so)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return {cpus[0]}, {cpus[1]}


def pin_to(cpus: set[int] | None) -> Callable[[], None] | None:
    if cpus is None:
        return None

    def pin() -> None:  # runs in the child between fork and exec; threads inherit it
        os.sched_setaffinity(0, cpus)

    return pin


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def _drain(stream: IO[str], log: IO[str], ports: queue.Queue[int | None]) -> None:
    """Copy ``stream`` to ``log`` (so the server never blocks on a full pipe); report the port."""
    announced = False
    for line in stream:
        log.write(line)
        match = _PORT_RE.search(line)
        if match and not announced:
            announced = True
            ports.put(int(match.group(1)))
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
    """Start a fresh ``side`` server on a free port, pinned to ``cpus``; return once it listens.

    Raises ``RuntimeError`` (with the log tail) if it does not announce its port in time.
    """
    if side == "triorelay":
        argv = ["-m", "triorelay", "serve", "--host", "127.0.0.1", "--port", "0"]
    elif side == "asyncio":
        argv = ["-m", "loadtest.baseline", "--host", "127.0.0.1", "--port", "0"]
    else:
        raise ValueError(f"unknown side {side!r}")
    proc = subprocess.Popen(
        [sys.executable, *argv],
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
        thread = threading.Thread(target=_drain, args=(stream, log, ports), daemon=True)
        thread.start()
        threads.append(thread)
    server = Server(side, proc, "", log, threads)
    try:
        port = None
        for _ in threads:  # one answer per stream: a port, or None at its end
            port = ports.get(timeout=STARTUP_TIMEOUT_S)
            if port is not None:
                break
    except queue.Empty:
        port = None
    if port is None:
        server.stop()
        raise RuntimeError(f"{side} server did not start: {log_path.read_text()[-2000:]}")
    server.url = f"ws://127.0.0.1:{port}"
    try:
        wait_until_serving(port)
    except OSError as error:
        server.stop()
        tail = log_path.read_text()[-2000:]
        raise RuntimeError(f"{side} server does not answer: {tail}") from error
    return server


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


def run_generator(
    argv: Sequence[str], out_json: Path, log_path: Path, *, cpus: set[int] | None, timeout_s: float
) -> tuple[dict[str, Any], float]:
    """Run ``python -m loadtest ARGV --json-out OUT`` pinned to ``cpus``.

    Returns the result object and the generator's CPU seconds (it and its worker processes,
    from the kernel's accounting of reaped children). Raises ``RuntimeError`` if it fails.
    """
    before = os.times()
    with log_path.open("w") as log:
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
    after = os.times()
    if proc.returncode != 0:
        tail = log_path.read_text()[-2000:]
        raise RuntimeError(f"generator exited {proc.returncode}: {tail}")
    cpu_s = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    result: dict[str, Any] = json.loads(out_json.read_text())
    return result, cpu_s
