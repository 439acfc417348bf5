"""CPU of one trio task step woken by a socket: the floor under any per-message wake-up.

``python tools/wake_cost.py [RATE ...]`` measures two kinds of step, at each ``RATE``
(messages per second), and prints this process's CPU time per step:

- **from idle**: a child process on the other CPU writes one 100-byte message at a time into
  a socket pair (busy-waiting for each one's time, so nothing batches); a trio task waits
  for the socket to be readable and reads, once per message, as the relay's reader tasks do.
  This core sleeps between messages.
- **a round trip on one core**: at each message's time a trio task sends a 100-byte request
  to a child process on the same CPU and waits for its 100-byte answer, as a relay does with
  a ``redis-server`` sharing its core: the step woken by the answer follows the child's run
  on that core, not an idle core. The CPU counted is this process's over the send, the wait
  and the read (the child's own is not).

No Python work at all is done per message: it is what a design pays for each extra task
that a message wakes. See ``docs/performance/redis/profile.md``.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial

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
    last_cpu = (os.cpu_count() or 1) - 1
    return cpu_per_message(
        partial(write_at, rate=rate, count=count), partial(read_woken, count=count), count, last_cpu
    )


def cpu_per_message(
    child_work: Callable[[socket.socket], None],
    work: Callable[[socket.socket], Awaitable[float]],
    count: int,
    child_cpu: int | None,
) -> float:
    """``child_work`` on one end of a socket pair in a child process (pinned to
    ``child_cpu``, else on this one), ``work`` on the other end under trio here: the CPU
    µs per message ``work`` reports over ``count`` messages."""
    mine, theirs = socket.socketpair()
    child = os.fork()
    if child == 0:
        mine.close()
        if child_cpu is not None:
            os.sched_setaffinity(0, {child_cpu})
        child_work(theirs)
        os._exit(0)
    theirs.close()
    try:
        cpu = trio.run(work, mine)
    finally:
        mine.close()  # (the answering child stops at its end of file)
        os.waitpid(child, 0)
    return cpu / count * 1e6


def answer_all(sock: socket.socket) -> None:
    """Answer every 100-byte request with one of its own, until the socket closes."""
    while True:
        request = sock.recv(len(MESSAGE))
        if not request:
            return
        sock.send(MESSAGE)


async def ask_at(sock: socket.socket, rate: int, count: int) -> float:
    """One request and its answer per ``1 / rate`` seconds; this process's CPU seconds over
    the sends, waits and reads (the sleeps between them cost nothing)."""
    sock.setblocking(False)
    period, spent = 1 / rate, 0.0
    due = trio.current_time()
    for _ in range(count):
        due += period
        await trio.sleep_until(due)
        started = time.process_time()
        sock.send(MESSAGE)
        got = 0
        while got < len(MESSAGE):
            await trio.lowlevel.wait_readable(sock)
            got += len(sock.recv(65536))
        spent += time.process_time() - started
    return spent


def round_trip_cost_at(rate: int) -> float:
    """CPU µs per request and answered wake-up, the other side on this CPU."""
    count = rate * SECONDS
    return cpu_per_message(answer_all, partial(ask_at, rate=rate, count=count), count, None)


def main() -> None:
    rates = [int(arg) for arg in sys.argv[1:]] or [2000, 5000, 10000]
    os.sched_setaffinity(0, {0})
    for rate in rates:
        idle = cost_at(rate)
        chained = round_trip_cost_at(rate)
        print(
            f"{rate:>6} msg/s: {idle:5.1f} µs of CPU per step woken from idle (wait, one recv);"
            f" {chained:5.1f} µs per round trip to a process on this core (send, wait, recv)"
        )


if __name__ == "__main__":
    main()
