"""CPU of one trio task step woken by a socket: the floor under any per-message wake-up.

``python tools/wake_cost.py [RATE ...]`` pins itself to the first CPU and a child process to
the last; the child writes one 100-byte message at a time into a socket pair at ``RATE``
messages per second (busy-waiting for each one's time, so nothing batches), and a trio task
waits for the socket to be readable and reads, once per message, as the relay's reader tasks
do. It prints this process's CPU time per message at each rate. No Python work at all is done
per message: it is what a design pays for each extra task that a message wakes. See
``docs/performance/redis/profile.md``.
"""

from __future__ import annotations

import os
import socket
import sys
import time

import trio

SECONDS = 8
MESSAGE = b"x" * 100


def write_at(sock: socket.socket, rate: int, count: int) -> None:
    """Write ``count`` messages, one per ``1 / rate`` seconds, each at its own time."""
    period = 1 / rate
    due = time.perf_counter()
    for _ in range(count):
        due += period
        while time.perf_counter() < due:
            pass
        sock.send(MESSAGE)


async def read_woken(sock: socket.socket, count: int) -> float:
    """Wait and read until ``count`` messages came; this process's CPU seconds for it."""
    sock.setblocking(False)
    expected, got = count * len(MESSAGE), 0
    started = time.process_time()
    while got < expected:
        await trio.lowlevel.wait_readable(sock)
        got += len(sock.recv(65536))
    return time.process_time() - started


def cost_at(rate: int) -> float:
    """CPU µs per woken step at ``rate`` messages per second."""
    count = rate * SECONDS
    reader, writer = socket.socketpair()
    child = os.fork()
    if child == 0:
        reader.close()
        os.sched_setaffinity(0, {(os.cpu_count() or 1) - 1})
        write_at(writer, rate, count)
        os._exit(0)
    writer.close()
    try:
        cpu = trio.run(read_woken, reader, count)
    finally:
        os.waitpid(child, 0)
        reader.close()
    return cpu / count * 1e6


def main() -> None:
    rates = [int(arg) for arg in sys.argv[1:]] or [2000, 5000, 10000]
    os.sched_setaffinity(0, {0})
    for rate in rates:
        print(f"{rate:>6} msg/s: {cost_at(rate):5.1f} µs of CPU per woken step (wait, one recv)")


if __name__ == "__main__":
    main()
