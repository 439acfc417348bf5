"""CPU of one `send` per delivery: the floor under any fan-out that writes each consumer's socket.

``python tools/send_cost.py [CONSUMERS] [RATE]`` pins itself to the first CPU and a child
process to the last. The child connects ``CONSUMERS`` TCP sockets over loopback to this
process and reads them all; this process, at ``RATE`` messages per second, writes each
message (a 100-byte frame) to every socket with one plain ``socket.send`` each, from one loop,
with no framing, locking or bookkeeping. It prints this process's CPU time per delivery: what
a relay pays for a delivery before any Python of its own, and what the FastAPI broadcast loop
pays too. See docs/topics/profile.md.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys
import time

SECONDS = 8
FRAME = b"\x81\x62" + b"x" * 98


def read_all(port: int, consumers: int) -> None:
    """Connect ``consumers`` sockets to ``port`` and read them until the writer closes them."""
    selector = selectors.DefaultSelector()
    for _ in range(consumers):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    open_sockets = consumers
    while open_sockets:
        for key, _ in selector.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if not sock.recv(65536):
                selector.unregister(sock)
                sock.close()
                open_sockets -= 1


def open_readers(consumers: int) -> tuple[list[socket.socket], int]:
    """``consumers`` non-blocking loopback sockets (``TCP_NODELAY``), read by a child process
    on the last CPU (:func:`read_all`); returns them and the child's PID. Close the sockets,
    then wait for the child."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=consumers)
    port = listener.getsockname()[1]
    child = os.fork()
    if child == 0:
        listener.close()
        os.sched_setaffinity(0, {(os.cpu_count() or 1) - 1})
        read_all(port, consumers)
        os._exit(0)
    sockets = []
    for _ in range(consumers):
        sock, _ = listener.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        sockets.append(sock)
    listener.close()
    return sockets, child


def cost(consumers: int, rate: int) -> float:
    """CPU µs per delivery of ``rate`` messages per second to ``consumers`` sockets."""
    sockets, child = open_readers(consumers)
    count = rate * SECONDS
    period = 1 / rate
    started = time.process_time()
    due = time.monotonic()
    for _ in range(count):
        due += period
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)  # idle between messages, as a relay's core is
        for sock in sockets:
            try:
                sock.send(FRAME)
            except BlockingIOError:  # the reader fell behind: this figure would flatter
                raise SystemExit("a socket was full: the reader fell behind") from None
    cpu = time.process_time() - started
    for sock in sockets:
        sock.close()
    os.waitpid(child, 0)
    return cpu / (count * consumers) * 1e6


def main() -> None:
    consumers = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    rate = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    os.sched_setaffinity(0, {0})
    per_delivery = cost(consumers, rate)
    print(f"1→{consumers} at {rate} msg/s: {per_delivery:.1f} µs of CPU per delivery (one send)")


if __name__ == "__main__":
    main()
