"""A wait on a closed socket: the trio behaviour ``compat/trio_waits.py`` steps around, and
its check."""

from __future__ import annotations

import socket

import pytest
import trio

from triorelay.compat.trio_waits import open_socket

pytestmark = pytest.mark.timeout(30)


async def test_trio_keeps_a_wait_on_a_closed_socket_registered() -> None:
    """Waiting on a closed socket fails with ValueError and leaves the wait registered: the
    next wait on any closed socket is a BusyResourceError (if this fails, trio changed: the
    check is then merely cheap)."""
    closed = socket.socket()
    closed.close()
    with pytest.raises(ValueError, match="negative"):
        await trio.lowlevel.wait_readable(closed)
    other = socket.socket()
    other.close()
    with pytest.raises(trio.BusyResourceError):
        await trio.lowlevel.wait_readable(other)


async def test_an_open_socket_is_waited_on_and_a_closed_one_refused() -> None:
    """open_socket hands an open socket back as it is, and refuses a closed one as a wait on it
    would if it closed meanwhile, so a wait registers nothing for descriptor -1."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        assert open_socket(ours) is ours
        theirs.send(b"x")
        await trio.lowlevel.wait_readable(open_socket(ours))
        ours.close()
        for _ in range(2):
            with pytest.raises(trio.ClosedResourceError):
                await trio.lowlevel.wait_readable(open_socket(ours))
