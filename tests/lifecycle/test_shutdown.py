"""SIGINT/SIGTERM shut the relay down cleanly, whichever way it was launched.

Each test starts a real relay process, connects a producer and a consumer, signals the process
(or its whole process group, as Ctrl-C and systemd do) and checks that both clients get close
1001 with a reason, that the process exits 0 within the graceful timeout, and that it printed
no traceback.
"""

from __future__ import annotations

import os
import signal

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from tests.processes import LAUNCHERS, start_relay_process

GRACEFUL_TIMEOUT_SECONDS = 2.0
BOUNDED = {"connect_timeout": 10, "disconnect_timeout": 10}


@pytest.mark.parametrize("target", ["process", "group"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
async def test_signal_closes_every_client_with_1001(
    launcher: str, signum: signal.Signals, target: str
) -> None:
    """A signal closes producers and consumers with 1001 and exits 0, no traceback."""
    relay = await start_relay_process(
        LAUNCHERS[launcher], {"TRIORELAY_GRACEFUL_TIMEOUT_SECONDS": str(GRACEFUL_TIMEOUT_SECONDS)}
    )
    process, port, output = relay.process, relay.port, relay.output
    try:
        url = f"ws://127.0.0.1:{port}"
        async with (
            open_websocket_url(url + "/ws/consumer/live", **BOUNDED) as consumer,
            open_websocket_url(url + "/ws/producer/live", **BOUNDED) as producer,
        ):
            await producer.send_message("before shutdown")
            assert await producer.get_message() == "before shutdown"
            assert await consumer.get_message() == "before shutdown"
            if target == "group":
                os.killpg(process.pid, signum)
            else:
                process.send_signal(signum)
            with trio.fail_after(GRACEFUL_TIMEOUT_SECONDS + 1):
                for client in (consumer, producer):
                    with pytest.raises(ConnectionClosed) as closed:
                        await client.get_message()
                    assert closed.value.reason.code == 1001
                    assert closed.value.reason.reason == "server shutting down"
        assert process.stderr is not None
        with trio.fail_after(GRACEFUL_TIMEOUT_SECONDS + 1):
            async for chunk in process.stderr:
                output += chunk
            assert await process.wait() == 0
        assert b"Traceback" not in output, output.decode()
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
