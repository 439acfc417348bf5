"""ReadLoop: a connection whose socket Hypercorn closed between two reads ends cleanly.

Hypercorn closes the socket itself at the end of a close handshake, while the read loop hands
the peer's close frame on: the loop's next wait would be on a closed socket, which trio leaves
registered (:mod:`triorelay.compat.trio_waits`), so every later one failed with
BusyResourceError and ended its connection through the server's error path.
"""

from __future__ import annotations

import logging

import pytest

from tests.conftest import StartRelay
from triorelay.compat.hypercorn import isolation

pytestmark = pytest.mark.timeout(30)


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
