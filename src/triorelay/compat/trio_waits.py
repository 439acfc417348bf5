"""A wait on a closed socket (trio 0.35, range-pinned in ``pyproject.toml``).

A closed stdlib socket's descriptor is -1. ``trio.lowlevel.wait_readable`` / ``wait_writable``
given one register a wait on descriptor -1, and when epoll refuses it with ``ValueError``
(``trio/_core/_io_epoll.py: EpollIOManager._update_registrations`` catches only ``OSError``)
the registration stays: every later wait on a closed socket, anywhere in the process, then
fails with ``BusyResourceError``. trio's own sockets check before they wait
(https://github.com/python-trio/trio/issues/1272 on closed descriptors); code that waits on a
raw socket must do the same. Hypercorn closes a connection's socket at the end of its close
handshake, between two reads of the relay's read loop, so without the check every client-closed
WebSocket after the first ended through the server's error path.
``tests/compat/test_trio_waits.py`` fails if trio's behaviour changes.
"""

from __future__ import annotations

import socket

import trio


def open_socket(sock: socket.socket) -> socket.socket:
    """``sock``, to wait on, or :class:`trio.ClosedResourceError` once it is closed (what a
    wait on it raises when it is closed while waiting)."""
    if sock.fileno() < 0:
        raise trio.ClosedResourceError("the socket is closed")
    return sock
