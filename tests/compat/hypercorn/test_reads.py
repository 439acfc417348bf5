"""ReadLoop: a connection whose socket Hypercorn closed between two reads ends cleanly.

Hypercorn closes the socket itself at the end of a close handshake, while the read loop hands
the peer's close frame on: the loop's next wait is on a closed socket. trio 0.35 registers a
wait on descriptor -1 and, when epoll refuses it with ValueError, leaves that registration
behind (``_io_epoll.EpollIOManager._update_registrations`` catches only OSError), so every
later wait on a closed socket in the process failed with BusyResourceError, which ended that
connection through the server's error path instead of its close.
"""

from __future__ import annotations

import logging
import socket

import pytest
import trio

from tests.conftest import StartRelay
from triorelay.compat.hypercorn import isolation

pytestmark = pytest.mark.timeout(30)


async def test_trio_keeps_a_wait_on_a_closed_socket_registered() -> None:
    """The trio behaviour the read loop steps around (if this fails, trio changed: the loop's
    check is then merely cheap)."""
    closed = socket.socket()
    closed.close()
    with pytest.raises(ValueError, match="negative"):
        await trio.lowlevel.wait_readable(closed)
    with pytest.raises(trio.BusyResourceError):
        await trio.lowlevel.wait_readable(closed)


async def test_connections_the_client_closes_end_through_their_close(
    start_relay: StartRelay, caplog: pytest.LogCaptureFixture
) -> None:
    """Five consumers and producers closed by the client one after another: no connection is
    dropped after an error (before the fix, all but the first were), and every one is counted as
    closed by the client."""
    relay = await start_relay()
    caplog.set_level(logging.WARNING, logger=isolation.__name__)
    for i in range(5):
        async with (
            relay.websocket(f"/ws/consumer/reads.{i}") as consumer,
            relay.websocket(f"/ws/producer/reads.{i}?ack=id") as producer,
        ):
            await producer.send_message("m")
            assert await consumer.get_message() == "m"
            await producer.get_message()  # accepted
    metrics = (await relay.http.get("/metrics")).text
    assert not [r.getMessage() for r in caplog.records if r.name == isolation.__name__]
    for role in ("consumer", "producer"):
        assert f'triorelay_connections_ended_total{{close="client",role="{role}"}} 5.0' in metrics
