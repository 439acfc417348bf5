"""Relay processes sharing channels through Redis: independent relays, and hypercorn -w 2."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import coredis
import psutil
import pytest
import trio
from trio_websocket import open_websocket_url

from tests.helpers import RawWebSocket, wait_until
from tests.processes import LAUNCHERS, TWO_WORKERS, kill_group, relay_process, worker_serving
from tests.redis_server import RedisServer


def without_broker() -> dict[str, str]:
    """This environment without any TRIORELAY_BROKER: the memory broker."""
    return {k: v for k, v in os.environ.items() if k != "TRIORELAY_BROKER"}


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
                    pid = worker_serving(workers, raw.sock.getsockname()[1])
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


async def test_a_dead_relays_unacknowledged_queue_message_goes_to_another(
    redis_server: RedisServer,
) -> None:
    """Queue mode: SIGKILL a relay whose consumer holds a message it could not send; another
    relay's consumer gets that message after the claim time, and every message arrives once."""
    env = {
        "TRIORELAY_BROKER": redis_server.url,
        "TRIORELAY_CHANNELS": '{"jobs.*": {"mode": "queue"}}',
        "TRIORELAY_REDIS_CLAIM_IDLE_SECONDS": "0.5",
    }
    count, padding = 200, "x" * 65536  # 12.8 MiB: more than the stalled socket can hold
    expected = [f"job{i}:{padding}" for i in range(count)]
    async with (
        relay_process(LAUNCHERS["serve"], env) as a,
        relay_process(LAUNCHERS["serve"], env) as b,
        coredis.Redis.from_url(redis_server.url) as client,
    ):
        stalled = await RawWebSocket.connect(a.port, "/ws/consumer/jobs.k")  # never reads
        try:
            async with open_websocket_url(
                b.ws_url + "/ws/producer/jobs.k?ack=id", **BOUNDED
            ) as producer:
                for message in expected:
                    await producer.send_message(message)
                for _ in range(count):
                    await producer.get_message()

            async def holders() -> dict[bytes, int]:
                summary: Any = await client.xpending("triorelay:q:jobs.k", "triorelay")
                return dict(summary.consumers)

            held_by_a = await wait_until(holders)
            assert list(held_by_a.values()) == [1]  # A's consumer: one message, unacknowledged
            kill_group(a)
            await a.process.wait()
            from_a, _, _ = await stalled.read_until_closed()  # what A had written before
        finally:
            stalled.close()
        assert len(from_a) < count  # (usually none: the first message already fills it)
        async with open_websocket_url(b.ws_url + "/ws/consumer/jobs.k", **BOUNDED) as on_b:
            with trio.fail_after(20):
                from_b = [await on_b.get_message() for _ in range(count - len(from_a))]
        assert sorted([*from_a, *from_b]) == sorted(expected)  # each exactly once
        assert not set(held_by_a) & set(await holders())  # A's consumer holds nothing now


async def test_several_hypercorn_workers_with_the_memory_broker_are_refused() -> None:
    """hypercorn -w 2 without a shared broker: the server stops at start with the reason
    (each worker would have channels of its own), instead of silently splitting them."""
    argv = TWO_WORKERS["hypercorn"]
    process = await trio.lowlevel.open_process(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=without_broker()
    )
    assert process.stderr is not None
    output = b""
    with trio.fail_after(30):
        async for chunk in process.stderr:
            output += chunk
        # The supervisor stops (its exit status is 0 all the same: Hypercorn 0.18's run()
        # recomputes it after terminating the other workers, from those already joined).
        await process.wait()
    assert b"with the memory broker each worker would have channels of its own" in output
    assert b"Running on" not in output
    assert b"Traceback" not in output
