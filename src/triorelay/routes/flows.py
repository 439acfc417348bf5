"""``/ws/echo``, ``/ws`` (text, file and proxy flows), ``/ws/upload``, ``/ws/proxy/{upstream}``.

Thin handlers on :func:`~triorelay.routes.session.open_session`. Apart from echo, each runs
:func:`_serve_client`: one nursery per connection, where a reader (Hypercorn's reader task
through the tap, and a task waiting for the disconnect; or, without a tap, a reader task of
ours) fills a channel of ``flow_buffer_messages`` and the handler takes the messages from it
in order. A full channel stops the reading, so backpressure reaches the client's TCP window.
Whichever ends first ends the other: the handler's end cancels the reader; the client's
disconnect ends the channel (the handler still takes what came before it) and cancels any
wait on an upstream.

The protocols are in :mod:`triorelay.protocols`, the upload store in :mod:`triorelay.uploads`,
the upstream side in :mod:`triorelay.proxy`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict

import trio

from triorelay import proxy
from triorelay.auth.grants import PROXY_RIGHT_PREFIX
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
from triorelay.routes.asgi import Socket
from triorelay.routes.session import Request, Session, open_session
from triorelay.uploads import StoredFile, Upload

DEFAULT_UPSTREAM = "default"
"""The upstream the ``/ws`` proxy flow asks."""

Handler = Callable[[Session[Connection], "_Client"], Awaitable[None]]


async def echo(request: Request) -> None:
    """``/ws/echo``: send every message back as it came (diagnostics, protocol conformance)."""
    async with open_session(request, request.relay.hub.attach_echo()) as session:
        connection, socket = session.connection, session.socket

        async def send_back(payloads: list[Payload]) -> None:
            connection.count_in(payloads)
            if connection.close_code is None and await socket.send_many(payloads):
                connection.count_out(payloads)

        await session.read_inbound(send_back)
        connection.disconnected = connection.close_code is None


async def flows(request: Request) -> None:
    """``/ws``: text, file and proxy flows, one after the other, until the client leaves."""
    await _serve_client(request, "flows", _run_flows)


async def uploads(request: Request) -> None:
    """``/ws/upload``: metadata, chunks, EOF; the stored id, size and sha256 back."""
    await _serve_client(request, "upload", _run_uploads)


async def proxy_pipe(request: Request) -> None:
    """``/ws/proxy/{name}``: a full-duplex pipe to the upstream ``name``."""
    name = request.argument
    if name not in request.relay.settings.proxy_upstreams:
        # Refused before the upgrade: nothing is dialled for an unknown name.
        raise UnknownUpstream(f"no upstream named {name[:64]!r}")

    async def run(session: Session[Connection], client: _Client) -> None:
        await _pipe(session, client, name)

    await _serve_client(request, "proxy", run)


async def _serve_client(request: Request, role: str, handler: Handler) -> None:
    """Run ``handler`` on a session whose client's messages a reader puts in a channel."""
    relay = request.relay
    async with open_session(request, relay.hub.attach_standalone(role)) as session:
        connection = session.connection
        client = _Client(
            relay.settings.flow_buffer_messages,
            session.socket,
            hypercorn_compat.watch_peer_close(request.send),
            connection,
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_read, session, client)
                try:
                    await handler(session, client)
                except (RequestError, ServiceError) as error:
                    connection.close(error.close_code, str(error))
                nursery.cancel_scope.cancel()
        finally:
            client.close()
        connection.disconnected = client.gone and connection.close_code is None


async def _read(session: Session[Connection], client: _Client) -> None:
    """Feed the client's messages to ``client`` until it disconnects, then end it."""
    connection = session.connection

    async def put(payloads: list[Payload]) -> None:
        connection.count_in(payloads)
        await client.put(payloads)

    if await session.read_inbound(put):
        client.end()


async def _run_flows(session: Session[Connection], client: _Client) -> None:
    parser = FlowParser()
    store = session.relay.uploads
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
            session.relay.access.require(session.identity, "upload")
            async with store.upload() as upload:
                if await _store(client, parser.receive, upload) is None:
                    return  # the client left mid-file: the partial file is removed
            reply = "File received successfully"
        elif isinstance(action, ProxyRequest):
            session.relay.access.require(session.identity, PROXY_RIGHT_PREFIX + DEFAULT_UPSTREAM)
            answer = await _ask_upstream(session, client, action.text)
            if answer is None:
                return  # the client left while the upstream was asked
            prefix = "External response: "
            reply = prefix + answer if isinstance(answer, str) else prefix.encode() + answer
        else:
            continue  # a flow name: its payload comes next
        if not await client.send(reply):
            return


async def _run_uploads(session: Session[Connection], client: _Client) -> None:
    store = session.relay.uploads
    parser = UploadParser(store.max_bytes)
    while True:
        try:
            metadata = parser.receive(await client.receive())
        except trio.EndOfChannel:
            return
        assert isinstance(metadata, UploadMetadata)
        async with store.upload(metadata.filename) as upload:
            stored = await _store(client, parser.receive, upload, metadata.sha256)
            if stored is None:
                return  # the client left mid-upload: the partial file is removed
        if not await client.send(json.dumps(asdict(stored))):
            return


async def _pipe(session: Session[Connection], client: _Client, name: str) -> None:
    connection = session.connection
    settings = session.relay.settings
    timeout = settings.close_timeout_seconds
    async with proxy.open_upstream(settings, name) as upstream:
        with session.rebound():
            try:
                ending = await proxy.pipe(client, upstream, timeout)
            finally:
                if connection.close_code is not None:
                    # The relay is closing the client (shutdown, a limit): the upstream too.
                    going = proxy.Close(CloseCode.GOING_AWAY, connection.close_reason)
                    await proxy.close_upstream(upstream, going, timeout)
    if ending is not None:
        connection.close(ending.code, ending.reason)


async def _ask_upstream(session: Session[Connection], client: _Client, text: str) -> Payload | None:
    """The ``/ws`` proxy flow: ``text`` to the upstream ``default``, its reply back.

    None when the client left before the reply (the upstream is then closed with 1001).
    """
    settings = session.relay.settings
    timeout = settings.close_timeout_seconds
    answer: Payload | None = None
    async with proxy.open_upstream(settings, DEFAULT_UPSTREAM) as upstream:
        with session.rebound():
            try:
                with client.cancelled_on_disconnect():
                    answer = await proxy.request(upstream, DEFAULT_UPSTREAM, text)
            finally:
                code = CloseCode.NORMAL if answer is not None else CloseCode.GOING_AWAY
                await proxy.close_upstream(upstream, proxy.Close(code, ""), timeout)
    return answer


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
        connection: Connection,
    ) -> None:
        self._sender, self._receiver = trio.open_memory_channel[Payload](buffer_messages)
        self._socket = socket
        self._peer = peer
        self._connection = connection
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
        sent = await self._socket.send_many([payload])
        if sent:
            self._connection.count_out([payload])
        return sent

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
