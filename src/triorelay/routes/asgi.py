"""The ASGI WebSocket plumbing every endpoint shares: types, the accepted socket, refusals.

:class:`Socket` writes through Hypercorn's batch path where it can
(:class:`~triorelay.compat.hypercorn.DirectWebSocket`), through ASGI otherwise;
:func:`reject` refuses an upgrade with an HTTP status (a :class:`Rejected` carries the
:class:`~triorelay.errors.RequestError` to it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio

from triorelay.compat import hypercorn as hypercorn_compat
from triorelay.envelopes import Payload
from triorelay.errors import RequestError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Query = dict[str, list[str]]
"""A request's query string, parsed (``urllib.parse.parse_qs``, blank values kept)."""


class Socket:
    """An accepted WebSocket: its ASGI callables, plus Hypercorn's batch path when available."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self._send = send
        self._direct = hypercorn_compat.open_direct(receive, send)

    @property
    def direct(self) -> hypercorn_compat.DirectWebSocket | None:
        return self._direct

    def receive_nowait(self) -> Message:
        """The next event Hypercorn already queued, or raise :class:`trio.WouldBlock`."""
        if self._direct is None:
            raise trio.WouldBlock
        return self._direct.receive_nowait()

    async def send_many(self, payloads: list[Payload]) -> bool:
        """Send ``payloads`` in order, in one socket write where possible.

        Returns False when the connection was already closed, so nothing went out.
        """
        if not payloads:
            return True
        if self._direct is not None:
            return await self._direct.send_messages(payloads)
        if hypercorn_compat.is_closed(self._send):
            return False
        for payload in payloads:
            await send_payload(self._send, payload)
        return True

    def send_many_nowait(self, payloads: list[Payload]) -> bool | bytes:
        """Send ``payloads`` in one socket write if that needs no waiting (Hypercorn's batch
        path only): True once written; False, having written nothing, when it cannot now (use
        :meth:`send_many`); or, when the socket took only part, the rest, which
        :meth:`finish_many` must write next (see
        :meth:`~triorelay.compat.hypercorn.DirectWebSocket.send_nowait`)."""
        if self._direct is None:
            return False
        return self._direct.send_many_nowait(payloads)

    async def finish_many(self, rest: bytes, payloads: list[Payload]) -> bool:
        """Write ``rest``, what the socket did not take of a write begun without waiting,
        then ``payloads``; False once the connection failed (see
        :meth:`~triorelay.compat.hypercorn.DirectWebSocket.finish_messages`)."""
        assert self._direct is not None, "only Hypercorn's batch path leaves a rest"
        return await self._direct.finish_messages(rest, payloads)


def payload_of(event: Message) -> Payload:
    payload: Payload | None = event.get("bytes")
    if payload is None:
        payload = event.get("text") or ""
    return payload


class Rejected(Exception):
    """A request refused before the upgrade."""

    def __init__(self, error: RequestError) -> None:
        super().__init__(str(error))
        self.error = error


async def reject(send: Send, error: RequestError) -> None:
    """Refuse the upgrade with an HTTP status and the reason as a plain-text body."""
    body = str(error).encode()
    await send(
        {
            "type": "websocket.http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "websocket.http.response.body", "body": body})


async def send_payload(send: Send, payload: Payload) -> None:
    if type(payload) is bytes:
        await send({"type": "websocket.send", "bytes": payload})
    else:
        await send({"type": "websocket.send", "text": payload})
