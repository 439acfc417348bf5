"""A TCP forwarding proxy for chaos tests: cut every connection with a reset, switch targets."""

from __future__ import annotations

import contextlib
import socket
import struct
from functools import partial

import trio

#: SO_LINGER on, 0 seconds: closing the socket sends a RST instead of a FIN.
_RESET = struct.pack("ii", 1, 0)


class ForwardingProxy:
    """Forwards each connection on its port to ``127.0.0.1:target_port``.

    :meth:`reset_all` cuts every forwarded connection with a TCP reset, on both sides, as a
    network failure would; :attr:`target_port` may be changed at any time (the next
    connection goes there: a load balancer moving clients to another relay).
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._pairs: set[tuple[trio.SocketStream, trio.SocketStream]] = set()
        self.accepted = 0
        self.resets = 0
        self._connected = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._forward, listeners, handler_nursery=nursery)

    async def _forward(self, client: trio.SocketStream) -> None:
        self.accepted += 1
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            reset(client)
            return
        pair = (client, upstream)
        self._pairs.add(pair)
        self._connected.set()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(_pump, client, upstream, nursery.cancel_scope))
                nursery.start_soon(partial(_pump, upstream, client, nursery.cancel_scope))
        finally:
            self._pairs.discard(pair)
            for stream in pair:
                reset(stream)

    def reset_all(self) -> int:
        """Cut every forwarded connection with a reset; return how many."""
        pairs = list(self._pairs)
        for pair in pairs:
            for stream in pair:
                reset(stream)
        self.resets += len(pairs)
        return len(pairs)

    @property
    def connections(self) -> int:
        return len(self._pairs)

    async def wait_for_connection(self) -> None:
        """Return once a connection is forwarded (at once if one is)."""
        await self._connected.wait()


async def _pump(source: trio.SocketStream, sink: trio.SocketStream, done: trio.CancelScope) -> None:
    try:
        while data := await source.receive_some(65536):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    done.cancel()


def reset(stream: trio.SocketStream) -> None:
    """Close ``stream``'s socket with a TCP reset (RST), not a FIN: a network failure."""
    sock = stream.socket
    if sock.fileno() == -1:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    sock.close()
