"""CPU of the relay's own fan-out path per delivery, beside a bare `send` per delivery.

``python tools/deliver_cost.py [CONSUMERS] [RATE] [ROUNDS]`` pins itself to the first CPU and a
child process to the last, which connects ``CONSUMERS`` TCP sockets over loopback and reads
them all (as ``tools/send_cost.py`` does). This process then, in alternating rounds:

- **relay**: publishes ``RATE`` messages a second into a real :class:`~triorelay.hub.Hub`
  channel with ``CONSUMERS`` consumers, each with a writer task as ``write_loop`` registers
  it, writing through a real :class:`~triorelay.compat.hypercorn.DirectWebSocket` on its
  socket (only the Hypercorn objects around it are stand-ins: no HTTP, no producer socket);
- **send**: writes each message to every socket with one plain ``socket.send`` from one loop.

It prints the CPU time per delivery of each round and the medians: the relay's round minus
the send round is what the hub and the direct write cost per delivery above the floor, with
no generator, no Hypercorn and no producer read in the figure. See docs/topics/profile.md.
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import trio
from wsproto.connection import Connection, ConnectionType

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from send_cost import open_readers

from triorelay.compat.hypercorn import DirectWebSocket
from triorelay.hub import Consumer, Hub
from triorelay.settings import load_settings

SECONDS = 6
PAYLOAD_BYTES = 100


class _Stream:
    """Hypercorn's trio stream, as far as DirectWebSocket reads it: the socket under it."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = type("SocketStreamSocket", (), {"_sock": sock})()

    async def send_all(self, data: bytes) -> None:  # the rest of a partial write
        await trio.lowlevel.checkpoint()
        sock = self.socket._sock
        while data:
            try:
                data = data[sock.send(data) :]
            except BlockingIOError:
                await trio.sleep(0.001)


class _TCPServer:
    def __init__(self, sock: socket.socket) -> None:
        self.send_lock = trio.Lock()
        self.stream = _Stream(sock)


class _WSStream:
    def __init__(self) -> None:
        self.closed = False
        self.connection = Connection(ConnectionType.SERVER)


async def _writer(
    consumer: Consumer, direct: DirectWebSocket, *, task_status: trio.TaskStatus[None]
) -> None:
    """A consumer's writer as ``routes.channels.write_loop`` runs it: direct writes registered,
    and what is buffered written when it wakes."""
    consumer.write_directly(direct.send_nowait, direct.send_many_nowait)
    task_status.started()
    try:
        while True:
            try:
                items: list[Any] = [await consumer.receive()]
            except trio.EndOfChannel:
                return
            consumer.take_buffered(items, 64)
            head = items[0]
            if hasattr(head, "rest"):
                await direct.finish_messages(items.pop(0).rest, items)
            else:
                await direct.send_messages([getattr(i, "payload", i) for i in items])
    finally:
        consumer.write_directly(None)
        unfinished = consumer.take_unfinished()
        if unfinished is not None:  # the rest of a frame is owed before the socket closes
            with trio.CancelScope(shield=True):
                await direct.finish_messages(unfinished.rest, [])


async def _relay_round(sockets: list[socket.socket], rate: int) -> float:
    hub = Hub(load_settings(consumer_buffer_messages=4096))
    count = rate * SECONDS
    async with trio.open_nursery() as nursery:
        attached = contextlib.ExitStack()
        for sock in sockets:
            consumer = attached.enter_context(hub.attach_consumer("fanout"))
            _, receive = trio.open_memory_channel[Any](1)
            direct = DirectWebSocket(_WSStream(), _TCPServer(sock), receive)
            await nursery.start(_writer, consumer, direct)
        with attached, hub.attach_producer("fanout") as producer:
            started = time.process_time()
            due = trio.current_time()
            for n in range(count):
                due += 1 / rate
                await trio.sleep_until(due)
                await producer.publish(f"{n:08d}".ljust(PAYLOAD_BYTES, "x"))
            cpu = time.process_time() - started
        nursery.cancel_scope.cancel()
    return cpu / (count * len(sockets)) * 1e6


def _send_round(sockets: list[socket.socket], rate: int) -> float:
    count = rate * SECONDS
    frame = b"\x81\x64" + b"x" * PAYLOAD_BYTES
    started = time.process_time()
    due = time.monotonic()
    for _ in range(count):
        due += 1 / rate
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        for sock in sockets:
            try:
                sock.send(frame)
            except BlockingIOError:  # the reader fell behind: this figure would flatter
                raise SystemExit("a socket was full: the readers fell behind") from None
    return (time.process_time() - started) / (count * len(sockets)) * 1e6


def main() -> None:
    consumers = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    rate = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    os.sched_setaffinity(0, {0})
    sockets, child = open_readers(consumers)
    relay, send = [], []
    for n in range(rounds):
        relay.append(trio.run(_relay_round, sockets, rate))
        send.append(_send_round(sockets, rate))
        print(f"round {n + 1}: relay {relay[-1]:.2f} µs, send {send[-1]:.2f} µs per delivery")
    for sock in sockets:
        sock.close()
    os.waitpid(child, 0)
    r, s = statistics.median(relay), statistics.median(send)
    print(
        f"1→{consumers} at {rate} msg/s, medians: relay {r:.2f} µs, send {s:.2f} µs, "
        f"the relay's path above the send {r - s:.2f} µs per delivery"
    )


if __name__ == "__main__":
    main()
