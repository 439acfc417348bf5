"""consume_jobs() end to end, against the real relay with an acked queue rule: ack, nack and
redelivery, max_in_flight, late acks refused, a dropped connection giving the jobs back, acks
of an ended connection not sent on the next one, dead letters."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.lowlevel

from tests.conftest import StartRelay
from tests.helpers import RunningRelay, wait_until
from tests.routes.test_jobs import RULE
from tests.routes.test_jobs import queued as waiting
from tests.tcp_proxy import ForwardingProxy
from triorelay.client import (
    Backoff,
    JobEvent,
    Jobs,
    JobsSubscribed,
    ProtocolError,
    ReceivedJob,
    Reconnecting,
    Refused,
    consume_jobs,
    publish,
    read_dead_letter,
    subscribe,
)

pytestmark = pytest.mark.timeout(30)

AckedRelay = Callable[..., Awaitable[RunningRelay]]

GUARD_SECONDS = 15
FAST = Backoff(initial_seconds=0.005, max_seconds=0.05)


@pytest.fixture
def acked_relay(start_relay: StartRelay, broker: str) -> AckedRelay:
    """``await acked_relay(**rule)``: a relay whose ``jobs*`` channels are acked queues
    (their dead-letter channels ``*.dead`` are broadcast)."""

    async def start(**rule: Any) -> RunningRelay:
        channels = {"*.dead": {"mode": "broadcast"}, "jobs*": {**RULE, **rule}}
        return await start_relay(broker=broker, channels=channels)

    return start


class Events:
    """Collects a job consumer's events; ``of(kind)`` lists those of one kind."""

    def __init__(self) -> None:
        self.items: list[JobEvent] = []

    def __call__(self, event: JobEvent) -> None:
        self.items.append(event)

    def of(self, kind: type[Any]) -> list[Any]:
        return [item for item in self.items if isinstance(item, kind)]


async def take(jobs: Jobs, count: int) -> list[ReceivedJob]:
    return [await jobs.__anext__() for _ in range(count)]


async def counts_of(server: RunningRelay, channel: str = "jobs") -> dict[str, int]:
    jobs: dict[str, int] = (await server.channel(channel))["jobs"]
    return jobs


@asynccontextmanager
async def consuming(url: str, events: Events, **options: Any) -> AsyncIterator[Jobs]:
    with trio.fail_after(GUARD_SECONDS):
        async with consume_jobs(url, "jobs", on_event=events, backoff=FAST, **options) as jobs:
            yield jobs


async def test_acked_jobs_are_done_and_the_rules_are_known(acked_relay: AckedRelay) -> None:
    """Each job comes with its payload (text or binary), id and first delivery; acked, the
    relay forgets it; the connection's rules are in ``jobs.rules``."""
    server = await acked_relay()
    events = Events()
    async with consuming(server.ws_url, events) as jobs:
        await publish(server.ws_url, "jobs", ["one", b"\x00two"])
        got = await take(jobs, 2)
        assert [await job.ack() for job in got] == [True, True]
        counts = await wait_until(lambda: _settled(server, acked=2))
        statistics = jobs.statistics()
    assert jobs.rules == JobsSubscribed("jobs", 4, 30.0, 3)
    assert events.of(JobsSubscribed) == [jobs.rules]
    assert [(job.payload, job.deliveries, job.redelivered) for job in got] == [
        ("one", 1, False),
        (b"\x00two", 1, False),
    ]
    assert [job.settled for job in got] == ["ack", "ack"]
    assert counts["in_flight"] == 0
    assert (statistics.received, statistics.acked, statistics.connections) == (2, 2, 1)


async def _settled(server: RunningRelay, **expected: int) -> dict[str, int] | None:
    counts = await counts_of(server)
    return counts if all(counts[key] == n for key, n in expected.items()) else None


async def test_a_nacked_job_comes_again_with_its_count(acked_relay: AckedRelay) -> None:
    """nack(delay_seconds=0) gives the job back at once: it comes again, ``deliveries`` 2,
    ``redelivered``; a second settle of the same job is a RuntimeError."""
    server = await acked_relay()
    async with consuming(server.ws_url, Events()) as jobs:
        await publish(server.ws_url, "jobs", ["task"])
        first = await jobs.__anext__()
        assert await first.nack(delay_seconds=0)
        again = await jobs.__anext__()
        assert (again.payload, again.deliveries, again.redelivered) == ("task", 2, True)
        assert await again.ack()
        with pytest.raises(RuntimeError, match="already acked"):
            await again.nack()
        with pytest.raises(ValueError, match="delay_seconds"):
            await (await _one_more(server, jobs)).nack(delay_seconds=-1)
        await wait_until(lambda: _settled(server, nacked=1, acked=1, redelivered=1))
    assert jobs.statistics().nacked == 1


async def _one_more(server: RunningRelay, jobs: Jobs) -> ReceivedJob:
    await publish(server.ws_url, "jobs", ["more"])
    return await jobs.__anext__()


async def test_max_in_flight_holds_the_relay_back(acked_relay: AckedRelay) -> None:
    """With the rule's ``max_in_flight`` 2 the client gets two jobs, the third waits in the
    queue (the relay's, or the Redis stream; not in the client) until one is acked."""
    server = await acked_relay(max_in_flight=2)
    async with consuming(server.ws_url, Events()) as jobs:
        await publish(server.ws_url, "jobs", ["1", "2", "3"])
        first, second = await take(jobs, 2)
        statistics = await wait_until(lambda: _queued(server, in_flight=2, queued=1))
        assert statistics["messages_out"] == 2
        assert jobs.statistics().buffered == 0
        await first.ack()
        third = await jobs.__anext__()
        assert [second.payload, third.payload] == ["2", "3"]


async def _queued(server: RunningRelay, *, in_flight: int, queued: int) -> dict[str, Any] | None:
    statistics = await server.channel("jobs")
    if statistics["jobs"]["in_flight"] == in_flight and await waiting(server) == queued:
        return statistics
    return None


async def test_several_tasks_share_one_consumer(acked_relay: AckedRelay) -> None:
    """Tasks reading the same Jobs share its jobs, each job going to one of them once, as
    the worker pool how-to runs them."""
    server = await acked_relay(max_in_flight=2)
    done: dict[str, list[str]] = {"a": [], "b": []}
    async with consuming(server.ws_url, Events()) as jobs, trio.open_nursery() as nursery:

        async def work(name: str) -> None:
            async for job in jobs:
                assert isinstance(job.payload, str)
                done[name].append(job.payload)
                await trio.lowlevel.checkpoint()  # the other task may take the next one
                await job.ack()

        for name in done:
            nursery.start_soon(work, name)
        await publish(server.ws_url, "jobs", [str(n) for n in range(6)])
        await wait_until(lambda: _settled(server, acked=6, in_flight=0))
        nursery.cancel_scope.cancel()
    assert sorted(done["a"] + done["b"]) == [str(n) for n in range(6)]


async def test_a_late_ack_is_refused_and_reported(acked_relay: AckedRelay) -> None:
    """Held past ``ack_timeout_seconds`` the job comes again; the first delivery's ack is
    still sent (same connection) and the relay's refusal comes as a Refused event, before the
    next job, and in ``statistics().refused``."""
    server = await acked_relay(max_in_flight=1, ack_timeout_seconds=0.2)
    events = Events()
    async with consuming(server.ws_url, events) as jobs:
        await publish(server.ws_url, "jobs", ["slow"])
        late = await jobs.__anext__()
        again = await jobs.__anext__()  # once the relay took it back
        assert again.deliveries == 2
        assert await late.ack()  # sent, then refused
        assert await again.ack()
        assert (await _one_more(server, jobs)).payload == "more"
    (refused,) = events.of(Refused)
    assert refused == Refused("jobs", "ack", late.delivery_id, "not_in_flight")
    assert jobs.statistics().refused == 1


async def test_a_dropped_connection_gives_the_jobs_back_and_their_acks_are_not_sent(
    acked_relay: AckedRelay, nursery: trio.Nursery
) -> None:
    """The connection is reset (no close frame): the relay gives back both jobs held, the
    client reconnects and gets them again (``deliveries`` 2, the same ids on the new
    connection). The ack of an old one returns False and is not sent: had it been, it would
    have acked the new job with its id."""
    server = await acked_relay()
    proxy = ForwardingProxy(server.port)
    await nursery.start(proxy.run)
    events = Events()
    async with consuming(f"ws://127.0.0.1:{proxy.port}", events) as jobs:
        await publish(server.ws_url, "jobs", ["a", "b"])
        old = await take(jobs, 2)
        assert proxy.reset_all() == 1
        new = await take(jobs, 2)
        assert sorted((job.payload, job.deliveries) for job in new) == [("a", 2), ("b", 2)]
        assert {job.delivery_id for job in new} == {job.delivery_id for job in old}
        assert [await job.ack() for job in old] == [False, False]
        assert await new[1].ack()
        # Acks are read in order: had the old ones been sent, they came first.
        counts = await wait_until(lambda: _settled(server, acked=1))
        assert counts["in_flight"] == 1
        assert await new[0].ack()
        await wait_until(lambda: _settled(server, acked=2, in_flight=0))
        statistics = jobs.statistics()
    assert len(events.of(Reconnecting)) == 1
    assert len(events.of(JobsSubscribed)) == 2
    assert (statistics.connections, statistics.unsent, statistics.acked) == (2, 2, 2)


async def test_jobs_of_an_ended_connection_left_in_the_buffer_are_dropped(
    acked_relay: AckedRelay,
) -> None:
    """Jobs the reader had not taken when their connection ended are dropped (counted), not
    returned: the relay gave them back, and they come again on the next connection."""
    server = await acked_relay()
    async with consuming(server.ws_url, Events()) as jobs:
        await publish(server.ws_url, "jobs", ["a", "b"])
        await wait_until(lambda: jobs.statistics().buffered == 3)  # subscribed, a, b
        jobs.reconnect()
        got = await take(jobs, 2)
        assert sorted((job.payload, job.deliveries) for job in got) == [("a", 2), ("b", 2)]
        assert jobs.statistics().dropped == 2


async def test_a_job_that_keeps_failing_is_read_back_from_the_dead_letter_channel(
    acked_relay: AckedRelay,
) -> None:
    """Nacked ``max_deliveries`` times, the job lands on ``jobs.dead``: a subscription there
    and read_dead_letter give its payload, deliveries and history."""
    server = await acked_relay(max_deliveries=2)
    async with (
        subscribe(server.ws_url, "jobs.dead") as dead,
        consuming(server.ws_url, Events()) as jobs,
    ):
        await wait_until(lambda: server.relay.hub.consumers_of("jobs.dead"))
        await publish(server.ws_url, "jobs", [b"\xffpoison"])
        for _ in range(2):
            await (await jobs.__anext__()).nack(delay_seconds=0)
        letter = read_dead_letter(await dead.__anext__())
    assert (letter.channel, letter.payload, letter.deliveries) == ("jobs", b"\xffpoison", 2)
    assert letter.reason == "max_deliveries"
    assert [end.outcome for end in letter.history] == ["nacked", "nacked"]


async def test_a_channel_that_is_not_an_acked_queue_ends_the_consumer(
    acked_relay: AckedRelay,
) -> None:
    """On a broadcast channel the async for raises ProtocolError saying so, at once."""
    server = await acked_relay()
    with trio.fail_after(GUARD_SECONDS):
        async with consume_jobs(server.ws_url, "news") as jobs:
            with pytest.raises(ProtocolError, match="not an acked queue"):
                await jobs.__anext__()
