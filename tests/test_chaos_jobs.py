"""Chaos for acked queues: workers killed again and again lose no job.

5,000 jobs go to 8 workers, each reading an acked queue channel through a forwarding proxy
of its own, doing simulated work and acking each job. A chaos task kills workers 20 times in
all at random moments (a TCP reset of the worker's connection, as a crash or a network
failure would). At the end every job was acked at least once, the relay holds nothing (no job
in flight, none waiting), and the number of jobs done twice is reported: at least once, not
exactly once. On the memory broker here; on Redis with two relays (one killed with SIGKILL)
in :func:`test_jobs_chaos_on_redis_with_a_relay_killed`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import coredis
import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from tests.conftest import StartRelay
from tests.processes import LAUNCHERS, kill_group, relay_process
from tests.redis_server import RedisServer
from tests.tcp_proxy import ForwardingProxy
from triorelay import framing

JOBS = 5_000
WORKERS = 8
KILLS = 20
RULE = {
    "mode": "queue",
    "ack": "explicit",
    "max_in_flight": 8,
    # Long enough that no job times out: what comes back, comes back for a kill.
    "ack_timeout_seconds": 20.0,
    "max_deliveries": 1_000,
    "redelivery_backoff_seconds": 0.0,
}

pytestmark = pytest.mark.timeout(120)


@dataclass
class Tally:
    """What the workers did: each ack they sent, by job."""

    acks: dict[int, int] = field(default_factory=dict)
    redelivered_seen: int = 0
    connections: int = 0
    relay_killed: bool = False
    all_acked: trio.Event = field(default_factory=trio.Event)
    third_acked: trio.Event = field(default_factory=trio.Event)

    def acked(self, job: int) -> None:
        self.acks[job] = self.acks.get(job, 0) + 1
        if len(self.acks) >= JOBS // 3:
            self.third_acked.set()
        if len(self.acks) == JOBS:
            self.all_acked.set()

    @property
    def done_twice(self) -> int:
        return sum(count - 1 for count in self.acks.values())


async def worker(url: str, tally: Tally, rng: random.Random) -> None:
    """Take jobs, work, ack; reconnect (forgetting what the lost connection held) when cut."""
    while True:
        try:
            async with open_websocket_url(
                f"{url}/ws/consumer/jobs", subprotocols=[framing.SUBPROTOCOL]
            ) as ws:
                tally.connections += 1
                await ws.get_message()  # subscribed
                while True:
                    frame = framing.decode(await ws.get_message())
                    if not isinstance(frame, framing.Job):
                        continue
                    if frame.deliveries > 1:
                        tally.redelivered_seen += 1
                    await trio.sleep(rng.uniform(0, 0.002))  # the simulated work
                    await ws.send_message(framing.ack(frame.delivery_id))
                    tally.acked(int(frame.payload))
        except (ConnectionClosed, HandshakeError, OSError, trio.BrokenResourceError):
            await trio.sleep(0.01)  # a worker's reconnect delay


async def publish_all(url: str) -> None:
    """Publish the jobs; ``ack=id`` waits for each batch to be queued (backpressure)."""
    async with open_websocket_url(f"{url}/ws/producer/jobs?ack=id") as producer:
        for start in range(1, JOBS + 1, 100):
            batch = range(start, min(start + 100, JOBS + 1))
            for job in batch:
                await producer.send_message(str(job))
            for _ in batch:
                json.loads(await producer.get_message())


async def kill_repeatedly(
    proxies: list[ForwardingProxy], kills: int, done: trio.Event, rng: random.Random
) -> int:
    """Reset a random worker's connection ``kills`` times (only while it has one)."""
    killed = 0
    while killed < kills and not done.is_set():
        await trio.sleep(rng.uniform(0.02, 0.12))
        proxy = rng.choice(proxies)
        if proxy.connections and proxy.reset_all():
            killed += 1
    return killed


async def chaos(
    relay_port: Callable[[], int],
    publish_url: str,
    held: Callable[[], Awaitable[dict[str, Any] | None]],
    nursery: trio.Nursery,
    *,
    kills: int = KILLS,
    during: Callable[[Tally], Awaitable[None]] | None = None,
    proxies_for: Callable[[int], int] | None = None,
    proxies_out: list[ForwardingProxy] | None = None,
) -> tuple[Tally, int, dict[str, Any]]:
    """Run the workers through proxies to ``relay_port()`` until every job is acked and
    ``held()`` says the relay holds nothing; return the tally, the kills done and what
    ``held()`` said last."""
    rng = random.Random(16)
    tally = Tally()
    proxies = proxies_out if proxies_out is not None else []
    for index in range(WORKERS):
        port = proxies_for(index) if proxies_for is not None else relay_port()
        proxy = ForwardingProxy(port)
        await nursery.start(proxy.run)
        proxies.append(proxy)
    with trio.fail_after(100):
        async with trio.open_nursery() as run:
            for index, proxy in enumerate(proxies):
                run.start_soon(worker, f"ws://127.0.0.1:{proxy.port}", tally, random.Random(index))
            killed: list[int] = []

            async def kill() -> None:
                killed.append(await kill_repeatedly(proxies, kills, tally.all_acked, rng))

            run.start_soon(kill)
            if during is not None:
                run.start_soon(during, tally)
            await publish_all(publish_url)
            await tally.all_acked.wait()
            statistics = None
            while statistics is None:  # a job whose ack was cut may still be redone
                statistics = await held()
                await trio.sleep(0.05)
            run.cancel_scope.cancel()
    return tally, killed[0] if killed else 0, statistics


async def test_jobs_chaos_on_the_memory_broker(
    start_relay: StartRelay, nursery: trio.Nursery
) -> None:
    """Memory broker: 5,000 jobs, 8 workers, 20 kills: every job acked, nothing left."""
    server = await start_relay(channels={"jobs": RULE})

    async def held() -> dict[str, Any] | None:
        statistics = await server.channel("jobs")
        idle = statistics["jobs"]["in_flight"] == 0 and statistics["buffered"] == 0
        return statistics if idle else None

    tally, killed, statistics = await chaos(lambda: server.port, server.ws_url, held, nursery)
    assert sorted(tally.acks) == list(range(1, JOBS + 1))  # every job, none lost
    # What came back came back for a kill, at once: not through the ack timeout.
    assert statistics["jobs"]["timed_out"] == 0
    # A kill can lose at most the acks of what its worker held.
    assert tally.done_twice <= killed * RULE["max_in_flight"]
    assert killed == KILLS
    assert tally.connections >= KILLS  # the workers did reconnect after the kills
    assert tally.redelivered_seen > 0  # the kills did cut jobs in flight
    print(f"memory: {killed} kills, {tally.done_twice} jobs done twice")  # noqa: T201


async def test_jobs_chaos_on_redis_with_a_relay_killed(
    redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    """Redis, two relay processes, four workers on each: 19 connection resets and one
    SIGKILL of a relay (its workers move to the other); the dead relay's jobs are claimed
    after ``redis_claim_idle_seconds``: every job acked, Redis holds nothing at the end."""
    env = {
        "TRIORELAY_BROKER": redis_server.url,
        "TRIORELAY_CHANNELS": json.dumps({"jobs": RULE}),
        "TRIORELAY_REDIS_CLAIM_IDLE_SECONDS": "1",
    }
    async with (
        relay_process(LAUNCHERS["hypercorn"], env) as doomed,
        relay_process(LAUNCHERS["hypercorn"], env) as survivor,
        coredis.Redis.from_url(redis_server.url) as client,
    ):
        proxies: list[ForwardingProxy] = []

        def port_for(index: int) -> int:
            return doomed.port if index < WORKERS // 2 else survivor.port

        async def kill_a_relay(tally: Tally) -> None:
            await tally.third_acked.wait()
            for proxy in proxies[: WORKERS // 2]:
                proxy.target_port = survivor.port
            kill_group(doomed)  # SIGKILL: what its workers held stays pending in Redis
            tally.relay_killed = True

        async def held() -> dict[str, Any] | None:
            waiting = await client.xlen("triorelay:q:jobs")
            pending = await client.xpending("triorelay:q:jobs", "triorelay")
            if waiting or pending.pending:
                return None
            async with httpx.AsyncClient() as http:
                answer = await http.get(f"http://127.0.0.1:{survivor.port}/channels/jobs")
            return {"survivor": answer.json()}

        tally, killed, statistics = await chaos(
            lambda: survivor.port,
            survivor.ws_url,
            held,
            nursery,
            kills=KILLS - 1,
            during=kill_a_relay,
            proxies_for=port_for,
            proxies_out=proxies,
        )
    assert sorted(tally.acks) == list(range(1, JOBS + 1))  # every job, none lost
    assert tally.done_twice <= (killed + WORKERS // 2) * RULE["max_in_flight"]
    assert statistics["survivor"]["jobs"]["timed_out"] == 0
    assert tally.relay_killed
    assert killed == KILLS - 1
    assert tally.redelivered_seen > 0
    print(f"redis: {killed} resets + 1 SIGKILL, {tally.done_twice} jobs done twice")  # noqa: T201
