"""``/ws`` (text, file and proxy flows), ``/ws/upload`` and ``/ws/proxy/{upstream}``.

Served on the same lean ASGI path as the relay endpoints (this middleware extends
:class:`RelayWebSockets`): each connection is attached to the hub so that shutdown closes it
with 1001, its closes are bounded by the reaper, and its inbound frames come through the tap
(the size limit checked on each frame header, liveness pings).

Each connection has one nursery. A reader (Hypercorn's reader task through the tap, and a task
waiting for the disconnect; or, without a tap, a reader task of ours) fills a channel of
``flow_buffer_messages``; the handler takes the messages from it in order. A full channel
stops the reading, so backpressure reaches the client's TCP window. Whichever ends first ends
the other: the handler's end cancels the reader; the client's disconnect ends the channel (the
handler still takes what came before it) and cancels any wait on an upstream.

The protocols are in :mod:`triorelay.protocols`, the upload store in :mod:`triorelay.uploads`,
the upstream side in :mod:`triorelay.proxy`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from functools import partial

import trio

from triorelay import proxy
from triorelay.compat import hypercorn as hypercorn_compat
from triorelay.envelopes import Payload
from triorelay.errors import CloseCode, RequestError, ServiceError, UnknownUpstream
from triorelay.hub import Connection
from triorelay.protocols import (
    Chunk,
    Echo,
    FileEnd,
    FileStart,
    FlowParser,
    ProxyRequest,
    UploadMetadata,
    UploadParser,
)
from triorelay.relay import Relay
from triorelay.routes.asgi import (
    ASGIApp,
    Receive,
    Rejected,
    Scope,
    Send,
    Socket,
    reject,
)
from triorelay.routes.websocket import RelayWebSockets
from triorelay.uploads import StoredFile, Upload

FLOWS_PATH = "/ws"
UPLOAD_PATH = "/ws/upload"
PROXY_PREFIX = "/ws/proxy/"
DEFAULT_UPSTREAM = "default"
"""The upstream the ``/ws`` proxy flow asks."""

Handler = Callable[[Connection, "_Client"], Awaitable[None]]


class FlowWebSockets(RelayWebSockets):
    """ASGI middleware: flow, upload and proxy paths here; relay paths and the rest as before."""

    def __init__(self, app: ASGIApp, relay: Relay) -> None:
        super().__init__(app, relay)
        self.store = relay.uploads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"] if scope["type"] == "websocket" else ""
        role, handler = self._route(path)
        if handler is None:
            await super().__call__(scope, receive, send)
            return
        connect = await receive()
        if connect["type"] != "websocket.connect":  # pragma: no cover - the ASGI spec's order
            return
        if role == "proxy":
            name = path.removeprefix(PROXY_PREFIX)
            if name not in self.relay.settings.proxy_upstreams:
                # Refused before the upgrade: nothing is dialled for an unknown name.
                await reject(send, UnknownUpstream(f"no upstream named {name[:64]!r}"))
                return
        try:
            await self._serve(role, handler, receive, send)
        except Rejected as rejected:
            await reject(send, rejected.error)

    def _route(self, path: str) -> tuple[str, Handler | None]:
        if path == FLOWS_PATH:
            return "flows", self._flows
        if path == UPLOAD_PATH:
            return "upload", self._uploads
        if path.startswith(PROXY_PREFIX):
            return "proxy", partial(self._proxy, path.removeprefix(PROXY_PREFIX))
        return "", None

    async def _serve(self, role: str, handler: Handler, receive: Receive, send: Send) -> None:
        """Accept, run ``handler`` beside the reader, then close as the hub or handler asked."""
        with ExitStack() as stack:
            attach = self.relay.hub.attach_standalone(role)
            connection = await self._open(stack, attach, send)
            socket = Socket(receive, send)
            client = _Client(
                self.relay.settings.flow_buffer_messages,
                socket,
                hypercorn_compat.watch_peer_close(send),
            )
            stack.callback(client.close)
            tap = self._tap(stack, connection, receive, send, socket, client.put)
            with trio.CancelScope() as scope:
                self._bind(connection, scope)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read, connection, client, receive, tap)
                    try:
                        await handler(connection, client)
                    except (RequestError, ServiceError) as error:
                        connection.close(error.close_code, str(error))
                    nursery.cancel_scope.cancel()
            connection.disconnected = client.gone and connection.close_code is None
            await self._finish(connection, send)

    async def _read(
        self,
        connection: Connection,
        client: _Client,
        receive: Receive,
        tap: hypercorn_compat.InboundTap | None,
    ) -> None:
        """Feed the client's messages to ``client`` until it disconnects, then end it."""
        if await self._read_inbound(connection, receive, tap, client.put):
            client.end()

    async def _flows(self, connection: Connection, client: _Client) -> None:
        """``/ws``: text, file and proxy flows, one after the other, until the client leaves."""
        parser = FlowParser()
        while True:
            try:
                payload = await client.receive()
            except trio.EndOfChannel:
                return
            action = parser.receive(payload)
            reply: Payload
            if isinstance(action, Echo):
                reply = f"Echo: {action.text}"
            elif isinstance(action, FileStart):
                async with self.store.upload() as upload:
                    if await _store(client, parser.receive, upload) is None:
                        return  # the client left mid-file: the partial file is removed
                reply = "File received successfully"
            elif isinstance(action, ProxyRequest):
                answer = await self._ask_upstream(connection, client, action.text)
                if answer is None:
                    return  # the client left while the upstream was asked
                prefix = "External response: "
                reply = prefix + answer if isinstance(answer, str) else prefix.encode() + answer
            else:
                continue  # a flow name: its payload comes next
            if not await client.send(reply):
                return

    async def _uploads(self, connection: Connection, client: _Client) -> None:
        """``/ws/upload``: metadata, chunks, EOF; the stored id, size and sha256 back."""
        parser = UploadParser(self.store.max_bytes)
        while True:
            try:
                metadata = parser.receive(await client.receive())
            except trio.EndOfChannel:
                return
            assert isinstance(metadata, UploadMetadata)
            async with self.store.upload(metadata.filename) as upload:
                stored = await _store(client, parser.receive, upload, metadata.sha256)
                if stored is None:
                    return  # the client left mid-upload: the partial file is removed
            if not await client.send(json.dumps(asdict(stored))):
                return

    async def _ask_upstream(
        self, connection: Connection, client: _Client, text: str
    ) -> Payload | None:
        """The ``/ws`` proxy flow: ``text`` to the upstream ``default``, its reply back.

        None when the client left before the reply (the upstream is then closed with 1001).
        """
        settings = self.relay.settings
        timeout = settings.close_timeout_seconds
        answer: Payload | None = None
        async with proxy.open_upstream(settings, DEFAULT_UPSTREAM) as upstream:
            with self._rebound(connection):
                try:
                    with client.cancelled_on_disconnect():
                        answer = await proxy.request(upstream, DEFAULT_UPSTREAM, text)
                finally:
                    code = CloseCode.NORMAL if answer is not None else CloseCode.GOING_AWAY
                    await proxy.close_upstream(upstream, proxy.Close(code, ""), timeout)
        return answer

    async def _proxy(self, name: str, connection: Connection, client: _Client) -> None:
        """``/ws/proxy/{name}``: a full-duplex pipe to the upstream ``name``."""
        settings = self.relay.settings
        timeout = settings.close_timeout_seconds
        async with proxy.open_upstream(settings, name) as upstream:
            with self._rebound(connection):
                try:
                    ending = await proxy.pipe(client, upstream, timeout)
                finally:
                    if connection.close_code is not None:
                        # The relay is closing the client (shutdown, a limit): the upstream too.
                        going = proxy.Close(CloseCode.GOING_AWAY, connection.close_reason)
                        await proxy.close_upstream(upstream, going, timeout)
        if ending is not None:
            connection.close(ending.code, ending.reason)

    @contextmanager
    def _rebound(self, connection: Connection) -> Iterator[None]:
        """Make the hub's close of ``connection`` cancel only the ``with`` block.

        Around an open upstream: cancelling the scope around :func:`proxy.open_upstream` would
        also cancel trio-websocket's reader task, and the upstream could no longer be closed
        with a close handshake. On leaving, the connection's own scope is bound again (and
        cancelled then if the connection was closed meanwhile).
        """
        outer = connection.cancel_scope
        with trio.CancelScope() as inner:
            self._bind(connection, inner)
            try:
                yield
            finally:
                if outer is not None:
                    self._bind(connection, outer)


async def _store(
    client: _Client,
    parse: Callable[[Payload], object],
    upload: Upload,
    sha256: str | None = None,
) -> StoredFile | None:
    """Write the chunks ``parse`` finds until it finds the end; commit. None if the client left."""
    while True:
        try:
            action = parse(await client.receive())
        except trio.EndOfChannel:
            return None
        if isinstance(action, FileEnd):
            return await upload.commit(sha256)
        assert isinstance(action, Chunk)
        await upload.write(action.data)


class _Client:
    """The client of one connection: its messages in order, its socket, how it closed.

    Its inbound channel is bounded (``buffer_messages``); :meth:`put` waits for room, which is
    backpressure on the reader that calls it.
    """

    def __init__(
        self,
        buffer_messages: int,
        socket: Socket,
        peer: hypercorn_compat.PeerClose | None,
    ) -> None:
        self._sender, self._receiver = trio.open_memory_channel[Payload](buffer_messages)
        self._socket = socket
        self._peer = peer
        self._waits: set[trio.CancelScope] = set()
        #: True once the client has disconnected (its messages may still be in the channel).
        self.gone = False

    async def put(self, payloads: list[Payload]) -> None:
        """Queue the client's messages, in order (called by the reader; never raises)."""
        try:
            for payload in payloads:
                await self._sender.send(payload)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the handler has ended: what still arrives is not taken

    def end(self) -> None:
        """The client disconnected: end the channel after its messages; cancel waits."""
        self.gone = True
        self._sender.close()
        for scope in self._waits:
            scope.cancel()

    def close(self) -> None:
        """The handler has ended: take nothing more."""
        self._receiver.close()
        self._sender.close()

    async def receive(self) -> Payload:
        """The next message; raises :class:`trio.EndOfChannel` once the client has gone."""
        return await self._receiver.receive()

    async def send(self, payload: Payload) -> bool:
        """Send one message, waiting for the socket; False once the client has gone."""
        return await self._socket.send_many([payload])

    def peer_close(self) -> proxy.Close | None:
        """The close frame the client sent, or None if it left without one."""
        peer = self._peer
        if peer is None or peer.code is None:
            return None
        return proxy.Close(peer.code, peer.reason)

    @contextmanager
    def cancelled_on_disconnect(self) -> Iterator[None]:
        """Run the ``with`` block until done, or until the client disconnects."""
        with trio.CancelScope() as scope:
            if self.gone:
                scope.cancel()
            self._waits.add(scope)
            try:
                yield
            finally:
                self._waits.discard(scope)
