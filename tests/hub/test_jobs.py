"""The memory broker's job queue (:class:`~triorelay.hub.jobs.JobQueue`): order, hand-over
to waiting consumers, delays, bounds. In-process, on trio's autojump clock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tests.conftest import make_settings
from triorelay.brokers import broker_factory
from triorelay.errors import QueueFull
from triorelay.hub import Hub
from triorelay.hub.buffers import Occupancy, QueueBudget
from triorelay.hub.jobs import JobQueue, JobReader

pytestmark = pytest.mark.timeout(10)


def job_queue(max_messages: int = 4, budget_bytes: int = 1000) -> JobQueue:
    return JobQueue(max_messages, Occupancy(), QueueBudget(budget_bytes), 5.0)


async def test_jobs_are_taken_in_order_and_their_bytes_held_until_settled() -> None:
    """Taken jobs still count in the budget (they are in flight); settling frees them."""
    queue = job_queue()
    await queue.put("a", 1, 1)
    await queue.put("bb", 2, 2)
    first, second = await queue.take(1), await queue.take(1)
    assert [(first.payload, first.seq), (second.payload, second.seq)] == [("a", 1), ("bb", 2)]
    assert (len(queue), queue.budget.bytes) == (0, 3)
    await queue.settle([first, second])
    assert queue.budget.bytes == 0


async def test_a_job_given_back_goes_to_the_consumer_waiting_longest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Waiting consumers are served first come, first served, new and returned jobs alike."""
    queue = job_queue()
    got: list[tuple[int, str]] = []

    async def take(consumer_id: int) -> None:
        job = await queue.take(consumer_id)
        got.append((consumer_id, str(job.payload)))

    await queue.put("task", 4, 1)
    job = await queue.take(1)
    async with trio.open_nursery() as nursery:
        for consumer_id in (2, 3):
            nursery.start_soon(take, consumer_id)
            await trio.testing.wait_all_tasks_blocked()
        queue.give_back(job, 0.0)
        await trio.testing.wait_all_tasks_blocked()
        await queue.put("next", 4, 2)
    assert got == [(2, "task"), (3, "next")]


async def test_a_delayed_job_is_not_handed_out_before_its_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Given back with a delay, a job waits it out, then goes to whoever waits."""
    queue = job_queue()
    await queue.put("task", 4, 1)
    job = await queue.take(1)
    given_back = trio.current_time()
    queue.give_back(job, 2.5)
    assert len(queue) == 1
    again = await queue.take(2)
    assert again is job
    assert trio.current_time() - given_back == pytest.approx(2.5)


async def test_an_earlier_delay_wakes_a_consumer_waiting_for_a_later_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A consumer waiting until a job's time sees a job due sooner when it comes."""
    queue = job_queue()
    for seq in (1, 2):
        await queue.put(str(seq), 1, seq)
    late, soon = await queue.take(1), await queue.take(1)
    queue.give_back(late, 10.0)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:

        async def give_soon() -> None:
            await trio.sleep(1.0)
            queue.give_back(soon, 1.0)

        nursery.start_soon(give_soon)
        first = await queue.take(2)
    assert first is soon
    assert trio.current_time() - start == pytest.approx(2.0)


async def test_a_consumer_cancelled_as_a_job_reached_it_passes_the_job_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A consumer cancelled while it waits, and handed a job before it ran again, passes the
    job on to the next one: never lost."""
    queue = job_queue()
    cancelled = trio.CancelScope()

    async def take_in_scope() -> None:
        with cancelled:
            await queue.take(1)
            raise AssertionError("the cancelled consumer took the job")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take_in_scope)
        await trio.testing.wait_all_tasks_blocked()
        cancelled.cancel()  # the waiting consumer is cancelled...
        await queue.put("task", 4, 1)  # ...and handed the job before it runs (no checkpoint)
    job = await queue.take(2)
    assert job.payload == "task"


async def test_put_waits_while_full_and_gives_up_after_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``queue_buffer_messages`` bounds what waits: a producer waits for room, at most
    ``block_timeout_seconds``; a job coming back is taken even past the bound."""
    queue = job_queue(max_messages=2)
    await queue.put("a", 1, 1)
    await queue.put("b", 1, 2)
    start = trio.current_time()
    with pytest.raises(QueueFull):
        await queue.put("c", 1, 3)
    assert trio.current_time() - start == pytest.approx(5.0)
    taken = await queue.take(1)
    await queue.put("c", 1, 3)  # room again
    queue.give_back(taken, 0.0)
    assert len(queue) == 3


async def test_put_waits_for_the_relay_wide_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Bytes in flight count: a producer waits until an ack frees them."""
    queue = job_queue(budget_bytes=10)
    await queue.put("x" * 8, 8, 1)
    job = await queue.take(1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.put, "y" * 8, 8, 2)
        await trio.testing.wait_all_tasks_blocked()
        assert len(queue) == 0  # still waiting
        await queue.settle([job])
    assert len(queue) == 1


async def test_closing_ends_every_wait_and_drops_what_waits() -> None:
    """Shutdown: a waiting consumer gets EndOfChannel, a producer ClosedResourceError; what
    waited leaves the budget (what is in flight leaves it when settled)."""
    queue = job_queue()
    await queue.put("a", 1, 1)
    await queue.put("b", 1, 2)
    in_flight = await queue.take(1)
    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:

            async def take_until_closed() -> None:
                await queue.take(2)  # "b"
                with pytest.raises(trio.EndOfChannel):
                    await queue.take(2)

            nursery.start_soon(take_until_closed)
            await trio.testing.wait_all_tasks_blocked()
            queue.close()
    assert queue.budget.bytes == 2
    await queue.settle([in_flight])
    assert queue.budget.bytes == 1
    with pytest.raises(trio.ClosedResourceError):
        await queue.put("c", 1, 3)


async def test_producers_waiting_on_a_full_queue_get_numbers_of_their_own() -> None:
    """Two producers waiting for room together each get their own sequence number (the
    memory broker numbers one queue publish at a time)."""
    settings = make_settings(
        channels={"jobs": {"mode": "queue", "ack": "explicit", "queue_buffer_messages": 1}}
    )
    hub = Hub(settings, broker_factory(settings))
    ids: list[int] = []
    with hub.attach_consumer("jobs") as consumer, hub.attach_producer("jobs") as first:
        ids.append(await first.publish("a"))  # the queue is full now

        async def produce(payload: str) -> None:
            with hub.attach_producer("jobs") as producer:
                ids.append(await producer.publish(payload))

        reader = consumer.inbox
        assert isinstance(reader, JobReader)
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(produce, "b")
                nursery.start_soon(produce, "c")
                await trio.testing.wait_all_tasks_blocked()  # both wait for room
                seqs = [(await reader.take()).seq for _ in range(3)]
    assert sorted(ids) == [1, 2, 3]
    assert sorted(seqs) == [1, 2, 3]
