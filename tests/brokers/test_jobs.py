"""The :class:`~triorelay.brokers.base.JobSource` contract, on the memory broker's job queue
and on Redis (:mod:`triorelay.brokers.redis.jobs`), then what only Redis has to survive: a
relay dying with jobs in flight, leases longer than the claim time, an outage.

The memory cases run on trio's autojump clock; the Redis ones on real (short) times, with a
claim time of 0.3 s and a hang guard on each.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import coredis
import pytest
import trio
import trio.testing

from tests.brokers.conftest import HANG_GUARD_SECONDS, Deliveries
from tests.conftest import make_settings
from tests.redis_server import RedisServer
from triorelay.brokers import broker_factory
from triorelay.brokers.base import Job, JobSource
from triorelay.brokers.redis import RedisBroker
from triorelay.envelopes import Payload, size_of
from triorelay.errors import BrokerUnavailable, QueueFull
from triorelay.hub import Hub
from triorelay.hub.buffers import Occupancy, QueueBudget
from triorelay.hub.jobs import JobQueue

NAME = "jobs.work"
CLAIM_IDLE_SECONDS = 0.3
REDIS = {
    "redis_claim_idle_seconds": CLAIM_IDLE_SECONDS,
    "broker_timeout_seconds": 2.0,
    "broker_reconnect_max_seconds": 0.2,
}
ACKED = {
    "channels": {"*.dead": {"mode": "broadcast"}, "jobs.*": {"mode": "queue", "ack": "explicit"}}
}


class Jobs:
    """One acked channel's source, and a way to publish to it (each backend its own)."""

    source: JobSource

    async def publish(self, payload: Payload) -> int:
        raise NotImplementedError

    async def written(self) -> None:
        """Return once what was given back is stored (at once for the memory queue)."""


class MemoryJobs(Jobs):
    def __init__(self) -> None:
        self.queue = JobQueue(1024, Occupancy(), QueueBudget(1 << 20), 1.0)
        self.source = self.queue
        self.seq = 0

    async def publish(self, payload: Payload) -> int:
        self.seq += 1
        await self.queue.put(payload, size_of(payload), self.seq)
        return self.seq


class RedisJobsUnderTest(Jobs):
    def __init__(self, broker: RedisBroker) -> None:
        self.broker = broker
        self.source = broker.jobs(NAME)

    async def publish(self, payload: Payload) -> int:
        published: list[int] = []
        await self.broker.publish(NAME, "queue", [payload], published)
        return published[0]

    async def written(self) -> None:
        await self.broker.job_store.wait_written()


def redis_broker(url: str, **overrides: Any) -> RedisBroker:
    broker = broker_factory(make_settings(broker=url, **{**REDIS, **overrides}))(
        Deliveries().deliver
    )
    assert isinstance(broker, RedisBroker)
    return broker


@pytest.fixture(params=["memory", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock(kind: str) -> trio.testing.MockClock | None:
    """The memory cases' clock: autojump (pytest-trio runs the test on it); Redis: real."""
    return trio.testing.MockClock(autojump_threshold=0) if kind == "memory" else None


@pytest.fixture
async def jobs(kind: str, nursery: trio.Nursery) -> AsyncIterator[Jobs]:
    if kind == "memory":
        yield MemoryJobs()
        return
    server = RedisServer()
    await server.start()
    try:
        broker = redis_broker(server.url)
        await nursery.start(broker.run)
        yield RedisJobsUnderTest(broker)
    finally:
        await server.kill()


def nacked(job: Job, consumer: str) -> Job:
    """What a consumer's InFlight does to a job it hands out, then takes back."""
    job.deliveries += 1
    job.history.append((time.time(), consumer, "nacked"))
    return job


# -- the contract, on both --


async def test_take_hands_out_published_jobs_in_order_with_their_seq(
    jobs: Jobs, clock: Any
) -> None:
    """Jobs are taken in the order published, text and binary, each with its sequence
    number, never delivered yet and with no history."""
    with trio.fail_after(HANG_GUARD_SECONDS):
        for payload in ("one", b"\x00two\xff", "thrée"):
            await jobs.publish(payload)
        taken = [await jobs.source.take(consumer) for consumer in (1, 2, 1)]
    assert [(job.payload, job.seq) for job in taken] == [
        ("one", 1),
        (b"\x00two\xff", 2),
        ("thrée", 3),
    ]
    assert [job.size for job in taken] == [3, 5, 6]
    assert all(job.deliveries == 0 and job.history == [] for job in taken)


async def test_settled_jobs_never_come_back(jobs: Jobs, clock: Any) -> None:
    """Jobs settled (together, in one call) are gone for good: after twice the claim time,
    the next take is the next job published."""
    with trio.fail_after(HANG_GUARD_SECONDS):
        await jobs.publish("a")
        await jobs.publish("b")
        await jobs.source.settle([await jobs.source.take(1), await jobs.source.take(1)])
        await trio.sleep(2 * CLAIM_IDLE_SECONDS)  # waiting for nothing to happen
        await jobs.publish("next")
        job = await jobs.source.take(2)
    assert (job.payload, job.seq) == ("next", 3)


async def test_a_job_given_back_at_once_goes_to_another_consumer_as_it_came_back(
    jobs: Jobs, clock: Any
) -> None:
    """give_back(job, 0): another consumer takes it next, with its deliveries and history."""
    with trio.fail_after(HANG_GUARD_SECONDS):
        await jobs.publish("job")
        job = nacked(await jobs.source.take(1), "consumer 1")
        history = list(job.history)
        jobs.source.give_back(job, 0)
        again = await jobs.source.take(2)
    assert (again.payload, again.seq, again.deliveries) == ("job", 1, 1)
    assert again.history == history


async def test_a_delayed_job_is_handed_out_once_its_delay_is_over(jobs: Jobs, clock: Any) -> None:
    """give_back(job, delay): not handed out before the delay (a job published after it is
    taken first), and handed out once it is over."""
    delay = 0.5
    with trio.fail_after(HANG_GUARD_SECONDS):
        await jobs.publish("delayed")
        job = nacked(await jobs.source.take(1), "consumer 1")
        given_back = trio.current_time()
        jobs.source.give_back(job, delay)
        await jobs.publish("later")
        first = await jobs.source.take(2)
        assert first.payload == "later"
        again = await jobs.source.take(2)
        waited = trio.current_time() - given_back
    assert (again.payload, again.deliveries) == ("delayed", 1)
    assert waited >= delay - 0.002  # Redis's clock in whole ms


async def test_a_raw_consumer_of_an_acked_channel_reads_and_acks(
    kind: str, nursery: trio.Nursery, clock: Any
) -> None:
    """Through the hub: an acked queue channel gets the broker's job source (Redis) or its
    own (memory), and a raw consumer reads its jobs; each is done once written."""
    server = RedisServer() if kind == "redis" else None
    if server is not None:
        await server.start()
    try:
        settings = make_settings(broker=server.url if server else "memory", **REDIS, **ACKED)
        hub = Hub(settings, broker_factory(settings))
        await nursery.start(hub.broker.run)
        with trio.fail_after(HANG_GUARD_SECONDS), hub.attach_producer(NAME) as producer:
            with hub.attach_consumer(NAME) as consumer:
                assert await producer.publish("first") == 1
                assert await producer.publish("second") == 2
                assert await consumer.receive() == "first"
                await consumer.acknowledge()
            with hub.attach_consumer(NAME) as consumer:
                assert await consumer.receive() == "second"
                await consumer.acknowledge()
    finally:
        if server is not None:
            await server.kill()


# -- Redis only --


@pytest.fixture
async def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


async def started(nursery: trio.Nursery, url: str, **overrides: Any) -> RedisBroker:
    broker = redis_broker(url, **overrides)
    await nursery.start(broker.run)
    return broker


async def take_on_a_relay_that_dies(url: str, **overrides: Any) -> tuple[Job, RedisBroker]:
    """Take a job on a relay of its own, then stop that relay without settling it."""
    async with trio.open_nursery() as nursery:
        dying = await started(nursery, url, **overrides)
        job = await dying.jobs(NAME).take(7)
        nursery.cancel_scope.cancel()
    return job, dying


async def test_release_gives_back_what_a_consumer_took_and_did_not_settle(
    nursery: trio.Nursery, redis_url: str
) -> None:
    """A consumer that leaves holding a job it neither settled nor gave back: the job goes
    back at once (not after the claim time: 600 s here), as it was."""
    broker = await started(nursery, redis_url, redis_claim_idle_seconds=600)
    jobs = RedisJobsUnderTest(broker)
    with trio.fail_after(HANG_GUARD_SECONDS):
        await jobs.publish("settled")
        await jobs.publish("held")
        await jobs.source.settle([await jobs.source.take(1)])
        held = await jobs.source.take(1)
        jobs.source.release(1)
        again = await jobs.source.take(2)
        await jobs.written()
    assert (again.payload, again.seq, again.deliveries) == ("held", held.seq, 0)
    assert broker.statistics()["jobs_held"] == 1  # consumer 2's, and no longer consumer 1's


async def test_a_job_of_a_relay_that_died_is_rescued_after_the_claim_time(
    nursery: trio.Nursery, redis_url: str
) -> None:
    """A relay dies holding a job: another relay hands it out after the claim time, its
    lost delivery counted and the dead relay's consumer in its history."""
    with trio.fail_after(HANG_GUARD_SECONDS):
        survivor = await started(nursery, redis_url)
        await RedisJobsUnderTest(survivor).publish("job")
        job, dead = await take_on_a_relay_that_dies(redis_url)
        died = trio.current_time()
        rescued = await survivor.jobs(NAME).take(1)
        waited = trio.current_time() - died
    assert (rescued.payload, rescued.seq, rescued.deliveries) == ("job", job.seq, 1)
    assert [(who, why) for _, who, why in rescued.history] == [
        (dead.queues.consumer_name(7), "relay died")
    ]
    assert abs(rescued.history[0][0] - time.time()) < 5
    assert waited >= CLAIM_IDLE_SECONDS / 2  # idle since the take, before the relay stopped
    assert survivor.statistics()["jobs_rescued"] == 1


async def test_a_job_held_on_a_live_relay_past_the_claim_time_is_not_rescued(
    nursery: trio.Nursery, redis_url: str
) -> None:
    """Its relay renews the lease: another relay waiting for jobs for five claim times
    gets nothing, and the holder can still give it back with its own history."""
    holder, other = await started(nursery, redis_url), await started(nursery, redis_url)
    with trio.fail_after(HANG_GUARD_SECONDS):
        await RedisJobsUnderTest(holder).publish("long job")
        job = await holder.jobs(NAME).take(1)
        with trio.move_on_after(5 * CLAIM_IDLE_SECONDS) as waiting:
            await other.jobs(NAME).take(2)
        assert waiting.cancelled_caught, "a live relay's job was rescued"
        holder.jobs(NAME).give_back(nacked(job, "consumer 1"), 0)
        again = await other.jobs(NAME).take(3)
    assert [why for _, _, why in again.history] == ["nacked"]
    assert again.deliveries == 1
    assert holder.statistics()["job_leases_renewed"] >= 3
    assert other.statistics()["jobs_rescued"] == 0


async def test_a_delayed_job_of_a_relay_that_died_is_still_handed_out(
    nursery: trio.Nursery, redis_url: str
) -> None:
    """A relay gives a job back with a delay, then dies before it is due: another relay
    hands it out once it is due, with the history the dead relay wrote."""
    delay = 0.6
    with trio.fail_after(HANG_GUARD_SECONDS):
        async with trio.open_nursery() as dying:
            relay = await started(dying, redis_url)
            await RedisJobsUnderTest(relay).publish("job")
            job = nacked(await relay.jobs(NAME).take(1), "consumer 1")
            given_back = trio.current_time()
            relay.jobs(NAME).give_back(job, delay)
            await relay.job_store.wait_written()
            dying.cancel_scope.cancel()
        survivor = await started(nursery, redis_url)
        again = await survivor.jobs(NAME).take(2)
        waited = trio.current_time() - given_back
    assert (again.payload, again.deliveries, len(again.history)) == ("job", 1, 1)
    assert waited >= delay - 0.002


async def test_a_delayed_job_is_handed_out_on_time_not_at_the_next_sweep(
    nursery: trio.Nursery, redis_url: str
) -> None:
    """The relay that gave a job back with a delay moves it back at its due time: with a
    claim time of 10 s consumers sweep every 5 s, and the job still comes within a second."""
    broker = await started(nursery, redis_url, redis_claim_idle_seconds=10)
    jobs = RedisJobsUnderTest(broker)
    with trio.fail_after(HANG_GUARD_SECONDS):
        await jobs.publish("job")
        job = nacked(await jobs.source.take(1), "consumer 1")
        given_back = trio.current_time()
        jobs.source.give_back(job, 0.3)
        await jobs.source.take(2)
        waited = trio.current_time() - given_back
    assert 0.3 - 0.002 <= waited < 1.0


async def test_a_queue_holding_a_delayed_job_never_expires_and_counts_it_as_full(
    nursery: trio.Nursery, redis_url: str
) -> None:
    """A job waiting out its delay keeps the queue's keys from expiring and counts against
    queue_buffer_messages; once settled, the keys expire again."""
    broker = await started(
        nursery,
        redis_url,
        redis_stream_ttl_seconds=60,
        queue_buffer_messages=1,
        block_timeout_seconds=0.2,
    )
    jobs = RedisJobsUnderTest(broker)
    async with coredis.Redis.from_url(redis_url) as client:
        with trio.fail_after(HANG_GUARD_SECONDS):
            await jobs.publish("job")
            jobs.source.give_back(nacked(await jobs.source.take(1), "consumer 1"), 0.5)
            await jobs.written()
            assert await client.xlen("triorelay:q:jobs.work") == 0
            assert await client.zcard("triorelay:qdelay:jobs.work") == 1
            for key in ("q", "qseq", "qdelay"):
                assert await client.pttl(f"triorelay:{key}:jobs.work") == -1, key
            with pytest.raises(QueueFull):
                await jobs.publish("one too many")
            await jobs.source.settle([await jobs.source.take(2)])
        assert 0 < await client.pttl("triorelay:q:jobs.work") <= 60_000
        assert 0 < await client.pttl("triorelay:qseq:jobs.work") <= 60_000


async def test_settle_raises_broker_unavailable_when_redis_is_gone(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    """Settling with Redis dead raises BrokerUnavailable (the job is then not renewed)."""
    broker = await started(nursery, redis_server.url)
    jobs = RedisJobsUnderTest(broker)
    with trio.fail_after(HANG_GUARD_SECONDS):
        await jobs.publish("job")
        job = await jobs.source.take(1)
        await redis_server.kill()
        with pytest.raises(BrokerUnavailable):
            await jobs.source.settle([job])
    assert broker.statistics()["jobs_held"] == 0


async def test_a_malformed_entry_is_dropped_counted_and_taking_goes_on(
    nursery: trio.Nursery, redis_url: str
) -> None:
    """A stream entry no relay wrote (no payload) is not handed out: it is deleted, counted,
    and the consumer gets the next job."""
    broker = await started(nursery, redis_url)
    jobs = RedisJobsUnderTest(broker)
    async with coredis.Redis.from_url(redis_url) as client:
        with trio.fail_after(HANG_GUARD_SECONDS):
            await jobs.publish("first")  # makes the group
            await jobs.source.settle([await jobs.source.take(1)])
            await client.xadd("triorelay:q:jobs.work", {"x": "not a job"})
            await jobs.publish("good")
            job = await jobs.source.take(1)
            assert await client.xlen("triorelay:q:jobs.work") == 1  # "good" alone
    assert job.payload == "good"
    assert broker.statistics()["malformed_jobs"] == 1
