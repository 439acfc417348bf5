"""The Hypercorn 0.18.0 internals triorelay relies on (src/triorelay/compat/hypercorn/).

If an upgrade changes them, these fail first, naming the assumption that broke.
"""

from __future__ import annotations

import hashlib
import inspect
import textwrap
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.ws_stream import WSStream
from hypercorn.trio import run as run_module
from hypercorn.trio import serve
from hypercorn.trio.tcp_server import TCPServer
from trio_websocket import open_websocket_url
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import CloseConnection

from triorelay.compat import hypercorn as compat
from triorelay.compat.hypercorn._chain import tcp_server_of
from triorelay.compat.hypercorn.direct import SendLock
from triorelay.compat.hypercorn.reads import ReadLoop


async def _probe(found: dict[str, Any], scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app that accepts, inspects its callables, then batch-sends and echoes."""
    assert scope["type"] == "websocket"
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    direct = compat.open_direct(receive, send)
    found["direct"] = direct
    found["send_lock"] = tcp_server_of(send).send_lock
    found["transport"] = compat.transport_of(send)
    found["closed_before"] = compat.is_closed(send)
    assert direct is not None
    await direct.send_messages(["one", b"two", "", "é" * 200, b"x" * 70_000])
    event = await receive()
    await direct.send_messages([event["text"]])
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def test_hypercorn_structure_is_what_compat_expects(nursery: trio.Nursery) -> None:
    """open_direct, transport_of and is_closed find Hypercorn's internals, and batches arrive."""
    found: dict[str, Any] = {}
    config = Config()
    config.bind = ["127.0.0.1:0"]
    stop = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await _probe(found, scope, receive, send)

    binds = await nursery.start(partial(serve, app, config, shutdown_trigger=stop.wait))
    url = "ws" + binds[0].removeprefix("http")
    async with open_websocket_url(url + "/") as ws:
        got = [await ws.get_message() for _ in range(5)]
        assert got == ["one", b"two", "", "é" * 200, b"x" * 70_000]
        await ws.send_message("back")
        assert await ws.get_message() == "back"
    stop.set()
    assert isinstance(found["direct"], compat.DirectWebSocket)
    assert isinstance(found["send_lock"], SendLock)
    assert isinstance(found["transport"], trio.SocketStream)
    assert found["closed_before"] is False


def test_outside_hypercorn_compat_finds_nothing() -> None:
    """Plain callables: every helper declines instead of guessing."""

    async def receive() -> dict[str, Any]:
        return {}

    async def send(message: dict[str, Any]) -> None:
        return None

    assert compat.open_direct(receive, send) is None
    assert compat.transport_of(send) is None
    assert compat.abort_transport(send) is False
    assert compat.is_closed(send) is False
    assert compat.cli_shutdown_event() is None
    assert compat.cli_worker_count() == 0


def test_hypercorn_only_takes_its_send_lock_with_async_with() -> None:
    """DirectWebSocket swaps the lock for a SendLock (any task may release it): Hypercorn
    must use nothing of it but ``async with`` (no ``locked()``, no owner checks)."""
    import hypercorn.trio.tcp_server as tcp_server_module

    source = inspect.getsource(tcp_server_module)
    uses = [line.strip() for line in source.splitlines() if "send_lock" in line]
    assert uses == ["self.send_lock = trio.Lock()", "async with self.send_lock:"]


#: sha256 of Hypercorn 0.18.0's ``TCPServer._read_data`` source, dedented.
READ_DATA_SHA256 = "73588ef2e57091d4ff384c80859ab0aac84c013006609611debeb2b49ec56344"


def test_hypercorn_reads_as_the_read_loop_expects() -> None:
    """ReadLoop replaces TCPServer._read_data for plain sockets without a read timeout: the
    loop it stands for must still read under fail_after, hand each read to the protocol as
    RawData, stop at EOF or a closed/broken stream, and end with Closed."""
    source = inspect.getsource(TCPServer._read_data)
    for line in (
        "with trio.fail_after(self.config.read_timeout or inf):",
        "data = await self.stream.receive_some(MAX_RECV)",
        "trio.ClosedResourceError,",
        "trio.BrokenResourceError,",
        "await self.protocol.handle(RawData(bytes(data)))",
        'if data == b"":',
        "await self.protocol.handle(Closed())",
    ):
        assert line in source, line
    # The whole loop, pinned: a line added to it (an exception caught, an event sent) would
    # be behaviour the read loop silently leaves out.
    digest = hashlib.sha256(textwrap.dedent(source).encode()).hexdigest()
    assert digest == READ_DATA_SHA256, "TCPServer._read_data changed: review compat/reads.py"
    assert "self._read_data()" in inspect.getsource(TCPServer.run)
    compat.isolate_connection_errors()  # what create_app does
    assert issubclass(run_module.TCPServer, ReadLoop), "the worker serves with it"


#: sha256 of Hypercorn 0.18.0's ``TCPServer._idle_timeout`` and ``protocol_send``, dedented.
IDLE_TIMEOUT_SHA256 = "076077a62ad1c28f101c404aecff3785d02b9c14117e0c4672420f6b290152ae"
PROTOCOL_SEND_SHA256 = "22b51ba714d07580a0c352848e88b4e849e977e2891eebfbf36286492a3696c8"


def test_hypercorn_times_idleness_as_the_idle_timer_expects() -> None:
    """IdleTimer stands in for ``TCPServer.idle_task``: Hypercorn must still restart it (with
    ``_idle_timeout``) before the read loop and on ``Updated(idle=True)``, stop it on
    ``Updated(idle=False)``, and close an idle connection as the read loop then does."""
    run = inspect.getsource(TCPServer.run)
    restart = "await self.idle_task.restart(self._task_group, self._idle_timeout)"
    assert restart in run
    assert run.index(restart) < run.index("await self._read_data()")
    send = inspect.getsource(TCPServer.protocol_send)
    assert restart in send
    assert "await self.idle_task.stop()" in send
    assert hashlib.sha256(textwrap.dedent(send).encode()).hexdigest() == PROTOCOL_SEND_SHA256
    idle = textwrap.dedent(inspect.getsource(TCPServer._idle_timeout))
    assert "await self._initiate_server_close()" in idle
    assert hashlib.sha256(idle.encode()).hexdigest() == IDLE_TIMEOUT_SHA256, (
        "TCPServer._idle_timeout changed: review compat/hypercorn/reads.py"
    )
    assert "self.idle_task = TrioSingleTask()" in inspect.getsource(TCPServer.__init__)
    # A request stops the timer before anything else happens to it (before any checkpoint).
    events = inspect.getsource(H11Protocol._handle_events)
    request_branch = events.split("if isinstance(event, h11.Request):", 1)[1]
    assert request_branch.split("\n")[1].strip() == "await self.send(Updated(idle=False))"


def test_hypercorn_writes_under_its_send_lock_shielded() -> None:
    """DirectWebSocket's frames stay whole only if Hypercorn's own writes take the same lock
    and cannot be cancelled halfway (TCPServer.protocol_send)."""
    source = inspect.getsource(TCPServer.protocol_send)
    assert "async with self.send_lock:" in source
    assert "cancel_scope.shield = True" in source
    assert "self.stream.send_all(event.data)" in source


def test_wsproto_state_is_the_attribute_direct_writes_read() -> None:
    """``DirectWebSocket.send_nowait`` reads ``Connection._state``, what ``state`` returns,
    and ``WSStream.connection`` is set once, at the handshake (it keeps the one it read)."""
    connection = WSConnection(ConnectionType.SERVER)
    for state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING, ConnectionState.CLOSED):
        connection._state = state
        assert connection.state is state
    connection._state = ConnectionState.OPEN
    client = WSConnection(ConnectionType.CLIENT)
    connection.receive_data(client.send(CloseConnection(code=1000, reason="bye")))
    assert list(connection.events())
    assert connection._state is ConnectionState.REMOTE_CLOSING
    assignments = [
        line.strip()
        for line in inspect.getsource(WSStream).splitlines()
        if "self.connection =" in line
    ]
    assert len(assignments) == 1
    assert "self.handshake.accept(" in assignments[0]
