"""Endpoint URLs of the servers under test (I/O-free).

Both triorelay and the baseline serve ``/ws/producer`` and ``/ws/consumer`` (channel
``default``); triorelay also serves ``/ws/{role}/{channel}`` and a producer query
``?ack=echo|id|none``. The baseline ignores query strings and always echoes.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import quote, urlsplit

Role = Literal["producer", "consumer"]
Ack = Literal["echo", "id", "none"]


def endpoint_url(base: str, role: Role, channel: str | None = None, ack: Ack | None = None) -> str:
    """Return the WebSocket URL of ``role`` on ``channel`` under ``base`` (``ws://host:port``).

    ``channel`` ``None`` selects the plain endpoint (channel ``default``); ``ack`` is only added
    for producers, and only when given, so the default URLs work against the baseline. Raises
    ``ValueError`` for a base that is not ``ws://`` or ``wss://``.
    """
    parts = urlsplit(base)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"base URL must look like ws://host:port, got {base!r}")
    url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}/ws/{role}"
    if channel is not None:
        url += "/" + quote(channel, safe="")
    if role == "producer" and ack is not None:
        url += f"?ack={ack}"
    return url


def host_port(url: str) -> tuple[str, int]:
    """Return ``(host, port)`` of a ``ws://``/``wss://`` URL (default ports 80/443)."""
    parts = urlsplit(url)
    if parts.hostname is None:
        raise ValueError(f"no host in {url!r}")
    return parts.hostname, parts.port or (443 if parts.scheme == "wss" else 80)


def resource(url: str) -> str:
    """Return the path and query of ``url`` (the HTTP request target of the handshake)."""
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
