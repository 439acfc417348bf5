"""Relay processes sharing channels through Redis: independent relays, and hypercorn -w 2."""

from __future__ import annotations

import json

import psutil
import pytest
import trio
from trio_websocket import open_websocket_url

from tests.helpers import RawWebSocket
from tests.processes import LAUNCHERS, relay_process
from tests.redis_server import RedisServer

BOUNDED = {"connect_timeout": 10, "disconnect_timeout": 10}
COUNT = 100


async def test_independent_relay_processes_share_a_channel(redis_server: RedisServer) -> None:
    """Producers on two relay processes reach consumers on both, each producer in order."""
    env = {"TRIORELAY_BROKER": redis_server.url}
    async with (
        relay_process(LAUNCHERS["serve"], env) as a,
        relay_process(LAUNCHERS["serve"], env) as b,
        open_websocket_url(a.ws_url + "/ws/consumer/shared", **BOUNDED) as on_a,
        open_websocket_url(b.ws_url + "/ws/consumer/shared", **BOUNDED) as on_b,
        open_websocket_url(a.ws_url + "/ws/producer/shared?ack=id", **BOUNDED) as from_a,
        open_websocket_url(b.ws_url + "/ws/producer/shared?ack=id", **BOUNDED) as from_b,
    ):
        for i in range(COUNT):
            await from_a.send_message(f"a{i}")
            await from_b.send_message(f"b{i}")
        acks = [json.loads(await p.get_message())["id"] for p in (from_a, from_b) * COUNT]
        assert sorted(acks) == list(range(1, 2 * COUNT + 1))  # one sequence for the channel
        for consumer in (on_a, on_b):
            with trio.fail_after(10):
                got = [await consumer.get_message() for _ in range(2 * COUNT)]
            for tag in "ab":
                assert [m for m in got if m[0] == tag] == [f"{tag}{i}" for i in range(COUNT)]


def _worker_serving(workers: list[psutil.Process], client_port: int) -> int:
    """The pid of the worker holding the server side of the connection from ``client_port``."""
    for worker in workers:
        for connection in worker.net_connections(kind="tcp"):
            if connection.raddr and connection.raddr.port == client_port:
                return worker.pid
    raise AssertionError(f"no worker serves the connection from port {client_port}")


TWO_WORKERS = {
    "hypercorn": [*LAUNCHERS["hypercorn"][:-1], "-w", "2", LAUNCHERS["hypercorn"][-1]],
    "serve": [*LAUNCHERS["serve"], "--workers", "2"],
}


@pytest.mark.parametrize("launcher", sorted(TWO_WORKERS))
async def test_two_workers_share_channels(redis_server: RedisServer, launcher: str) -> None:
    """hypercorn -w 2 / serve --workers 2: a producer reaches consumers on both workers."""
    argv = TWO_WORKERS[launcher]
    async with relay_process(argv, {"TRIORELAY_BROKER": redis_server.url}) as relay:
        # Its children: the two workers (and multiprocessing's resource tracker).
        workers = psutil.Process(relay.process.pid).children()
        consumers: dict[int, RawWebSocket] = {}
        extra: list[RawWebSocket] = []
        try:
            # Connect until both workers serve a consumer (the kernel picks the worker).
            with trio.fail_after(20):
                while len(consumers) < 2:
                    raw = await RawWebSocket.connect(relay.port, "/ws/consumer/w2", 65536)
                    pid = _worker_serving(workers, raw.sock.getsockname()[1])
                    if pid in consumers:
                        extra.append(raw)
                    else:
                        consumers[pid] = raw
            async with open_websocket_url(
                relay.ws_url + "/ws/producer/w2?ack=id", **BOUNDED
            ) as producer:
                for i in range(COUNT):
                    await producer.send_message(f"m{i}")
                for _ in range(COUNT):
                    await producer.get_message()
            for raw in consumers.values():
                with trio.fail_after(10):
                    assert await raw.read_messages(COUNT) == [f"m{i}" for i in range(COUNT)]
        finally:
            for raw in [*consumers.values(), *extra]:
                raw.close()
