"""Chaos: a subscriber whose connection is cut again and again ends with every message once.

A producer sends 10,000 messages at 2,000 msg/s; the Python client (``triorelay.client``)
reads them through a forwarding proxy while a chaos task cuts its connection 50 times at
random points, three ways: the client closes it itself, the proxy resets it (a TCP RST on
both sides, as a network failure), the relay evicts it (closed with 1013, as a slow
consumer). The client must end with exactly messages 1..10,000, in order, no duplicate: on
the memory broker and on Redis; and with Redis and two relay processes, it also resumes on
the other relay after its relay is killed with SIGKILL.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import trio
from trio_websocket import open_websocket_url

from tests.conftest import StartRelay
from tests.helpers import RunningRelay
from tests.processes import LAUNCHERS, kill_group, relay_process
from tests.redis_server import RedisServer
from tests.tcp_proxy import ForwardingProxy
from triorelay.client import Backoff, Event, Subscribed, Subscription, subscribe
from triorelay.errors import CloseCode

MESSAGES = 10_000
RATE = 2_000
CUTS = 50
#: Resumes must always be possible: the history covers the whole run.
HISTORY = {"history_messages": MESSAGES, "history_bytes": 16 * 1024 * 1024}
#: Reconnect at once and often: the point is many resumes, not waiting out a backoff.
QUICK = Backoff(initial_seconds=0.01, max_seconds=0.2)

pytestmark = pytest.mark.timeout(120)


async def produce(url: str, channel: str, *, pace: bool = True) -> None:
    """Publish ``1..MESSAGES`` at RATE (2 messages a millisecond tick), acks off."""
    async with open_websocket_url(f"{url}/ws/producer/{channel}?ack=none") as producer:
        start = trio.current_time()
        for i in range(1, MESSAGES + 1):
            await producer.send_message(str(i))
            if pace and i % 2 == 0:
                await trio.sleep_until(start + i / RATE)
        # The producer stays until everything is read (closing it changes nothing, but a
        # close right after the last send can race the relay's reading of it).
        await trio.sleep_forever()


class Reader:
    """The subscriber: reads the channel with the Python client until message MESSAGES."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.subscription: Subscription | None = None
        self.done = trio.Event()
        self.third = trio.Event()
        #: The first connection's ``subscribed`` came: publishing may start.
        self.subscribed = trio.Event()

    def on_event(self, event: Event) -> None:
        if isinstance(event, Subscribed):
            self.subscribed.set()

    async def run(self, url: str, channel: str) -> None:
        async with subscribe(
            url, channel, backoff=QUICK, ping_interval_seconds=None, on_event=self.on_event
        ) as sub:
            self.subscription = sub
            async for message in sub:
                self.received.append(int(message.payload))
                if len(self.received) == MESSAGES // 3:
                    self.third.set()
                if int(message.payload) == MESSAGES:
                    self.done.set()
                    return

    def client_closes(self) -> None:
        assert self.subscription is not None
        self.subscription.reconnect()


async def cut_repeatedly(
    cuts: list[Callable[[], object]], done: trio.Event, counts: dict[str, int]
) -> None:
    """Cut the subscriber's connection CUTS times, at random moments of the run."""
    rng = random.Random(13)
    run_seconds = MESSAGES / RATE
    for _ in range(CUTS):
        await trio.sleep(rng.uniform(0, 1.6 * run_seconds / CUTS))
        if done.is_set():
            return
        cut = rng.choice(cuts)
        cut()
        counts[cut.__name__] = counts.get(cut.__name__, 0) + 1


def evict(relay: RunningRelay, channel: str) -> Callable[[], None]:
    def relay_evicts() -> None:
        for consumer in relay.relay.hub.consumers_of(channel):  # the relay's slow-consumer close
            consumer.close(CloseCode.TRY_AGAIN_LATER, "consumer too slow: evicted by the test")

    return relay_evicts


async def chaos_run(
    server: RunningRelay, nursery: trio.Nursery
) -> tuple[list[int], dict[str, int]]:
    proxy = ForwardingProxy(server.port)
    await nursery.start(proxy.run)
    reader = Reader()
    counts: dict[str, int] = {}
    with trio.fail_after(90):
        async with trio.open_nursery() as run:
            run.start_soon(reader.run, f"ws://127.0.0.1:{proxy.port}", "chaos")
            await reader.subscribed.wait()
            run.start_soon(produce, server.ws_url, "chaos")

            def network_resets() -> None:
                proxy.reset_all()

            cuts = [reader.client_closes, network_resets, evict(server, "chaos")]
            run.start_soon(cut_repeatedly, cuts, reader.done, counts)
            await reader.done.wait()
            run.cancel_scope.cancel()
    return reader.received, counts


async def test_chaos_on_the_memory_broker(start_relay: StartRelay, nursery: trio.Nursery) -> None:
    """Memory broker: 50 cuts of three kinds; every message once, in order."""
    server = await start_relay(**HISTORY)
    received, counts = await chaos_run(server, nursery)
    assert received == list(range(1, MESSAGES + 1))
    assert sum(counts.values()) >= CUTS // 2, counts
    assert len(counts) == 3, counts


async def test_chaos_on_redis(
    start_relay: StartRelay, redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    """Redis broker: the same 50 cuts; every message once, in order."""
    server = await start_relay(broker=redis_server.url, **HISTORY)
    received, counts = await chaos_run(server, nursery)
    assert received == list(range(1, MESSAGES + 1))
    assert sum(counts.values()) >= CUTS // 2, counts
    assert len(counts) == 3, counts


async def test_a_subscriber_resumes_on_another_relay_after_its_relay_is_killed(
    redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    """Two relay processes on one Redis: the subscriber's relay is killed with SIGKILL
    mid-stream; the load balancer (the proxy) sends it to the other one, where it resumes
    from its last position: every message once, in order."""
    env = {"TRIORELAY_BROKER": redis_server.url, "TRIORELAY_HISTORY_MESSAGES": str(MESSAGES),
           "TRIORELAY_HISTORY_BYTES": str(16 * 1024 * 1024)}  # fmt: skip
    async with (
        relay_process(LAUNCHERS["hypercorn"], env) as doomed,
        relay_process(LAUNCHERS["hypercorn"], env) as survivor,
    ):
        proxy = ForwardingProxy(doomed.port)
        await nursery.start(proxy.run)
        reader = Reader()
        with trio.fail_after(90):
            async with trio.open_nursery() as run:
                run.start_soon(reader.run, f"ws://127.0.0.1:{proxy.port}", "chaos")
                await reader.subscribed.wait()
                run.start_soon(produce, survivor.ws_url, "chaos")
                await reader.third.wait()
                proxy.target_port = survivor.port
                kill_group(doomed)  # SIGKILL, its workers too
                await reader.done.wait()
                run.cancel_scope.cancel()
        assert proxy.accepted >= 2  # it did reconnect, through the proxy, to the survivor
    assert reader.received == list(range(1, MESSAGES + 1))
