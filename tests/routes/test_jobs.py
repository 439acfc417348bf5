"""Acked queue channels (``ack = "explicit"``) over WebSocket: jobs, acks, nacks, timeouts,
``max_in_flight``, dead letters, consumers leaving. A real server, on the memory broker and on
a real redis-server."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import coredis
import pytest
import trio
from trio_websocket import WebSocketConnection

from tests.conftest import StartRelay
from tests.helpers import RunningRelay, closed_with, refused_upgrade, wait_until
from tests.redis_server import RedisServer
from triorelay import framing
from triorelay.client import read_dead_letter, subscribe
from triorelay.framing import Control, Job

pytestmark = [pytest.mark.both_paths, pytest.mark.timeout(30)]

AckedRelay = Callable[..., Awaitable[RunningRelay]]

RULE: dict[str, Any] = {
    "mode": "queue",
    "ack": "explicit",
    "max_in_flight": 4,
    "ack_timeout_seconds": 30.0,
    "max_deliveries": 3,
    "redelivery_backoff_seconds": 0.0,
}


@pytest.fixture
def acked_relay(start_relay: StartRelay, broker: str) -> Callable[..., Awaitable[RunningRelay]]:
    """``await acked_relay(**rule)``: a relay whose ``jobs*`` channels are acked queues."""

    async def start(**rule: Any) -> RunningRelay:
        channels = {"*.dead": {"mode": "broadcast"}, "jobs*": {**RULE, **rule}}
        return await start_relay(broker=broker, channels=channels)

    return start


async def queued(server: RunningRelay, channel: str = "jobs") -> int:
    """Jobs waiting to be handed out: in the relay (memory), or in the stream (Redis)."""
    settings = server.relay.settings
    if settings.broker == "memory":
        return int((await server.channel(channel))["buffered"])
    key = f"{settings.redis_key_prefix}q:{channel}"
    async with coredis.Redis.from_url(settings.broker) as client:
        held = (await client.xpending(key, "triorelay")).pending  # taken, not yet acked
        return int(await client.xlen(key)) - held


def worker(server: RunningRelay, channel: str = "jobs") -> Any:
    return server.websocket(f"/ws/consumer/{channel}", subprotocols=[framing.SUBPROTOCOL])


async def subscribed(ws: WebSocketConnection) -> dict[str, Any]:
    frame = framing.decode(await ws.get_message())
    assert isinstance(frame, Control), frame
    assert frame.kind == "subscribed", frame
    return frame.fields


async def next_job(ws: WebSocketConnection) -> Job:
    frame = framing.decode(await ws.get_message())
    assert isinstance(frame, Job), frame
    return frame


async def next_control(ws: WebSocketConnection) -> Control:
    frame = framing.decode(await ws.get_message())
    assert isinstance(frame, Control), frame
    return frame


async def publish(server: RunningRelay, channel: str, *payloads: str | bytes) -> list[int]:
    """Publish with ``ack=id``: each ack says the job is queued."""
    ids = []
    async with server.websocket(f"/ws/producer/{channel}?ack=id") as producer:
        for payload in payloads:
            await producer.send_message(payload)
            ids.append(json.loads(await producer.get_message())["id"])
    return ids


async def jobs_of(server: RunningRelay, channel: str = "jobs") -> dict[str, int]:
    statistics = await server.channel(channel)
    jobs: dict[str, int] = statistics["jobs"]
    return jobs


async def test_a_worker_gets_each_job_with_its_delivery_id_and_count_and_an_ack_ends_it(
    acked_relay: AckedRelay,
) -> None:
    """``subscribed`` states the rules; a job frame is ``j <channel> <id> <deliveries>``;
    acked, a job is gone: a worker that comes after gets only what was not acked."""
    server = await acked_relay()
    async with worker(server) as ws:
        assert ws.subprotocol == framing.SUBPROTOCOL
        rules = await subscribed(ws)
        assert (rules["ack"], rules["max_in_flight"], rules["max_deliveries"]) == (
            "explicit",
            4,
            3,
        )
        assert await publish(server, "jobs", "one", b"\x00two") == [1, 2]
        raw = await ws.get_message()
        assert raw == "j jobs 1 1\none"
        second = await next_job(ws)
        assert (second.payload, second.deliveries) == (b"\x00two", 1)
        await ws.send_message(framing.ack(1))
        await wait_until(lambda: _acked(server, 1))
    # The worker left holding the second job: it goes back, the acked one does not.
    async with worker(server) as again:
        await subscribed(again)
        job = await next_job(again)
        assert (job.payload, job.deliveries) == (b"\x00two", 2)
        assert (await jobs_of(server))["redelivered"] == 1


async def _acked(server: RunningRelay, count: int) -> dict[str, int] | None:
    counts = await jobs_of(server)
    return counts if counts["acked"] == count else None


async def test_a_nack_gives_the_job_to_another_worker_with_its_count(
    acked_relay: AckedRelay,
) -> None:
    """Nacked, the job goes to a worker that is waiting, its delivery count up by one."""
    server = await acked_relay(max_in_flight=1)
    async with worker(server) as first:
        await subscribed(first)
        await publish(server, "jobs", "task")
        job = await next_job(first)
        async with worker(server) as second:
            await subscribed(second)
            await wait_until(lambda: _consumers_waiting(server))
            await first.send_message(framing.nack(job.delivery_id, 0))
            again = await next_job(second)
            counts = await jobs_of(server)
    assert (again.payload, again.deliveries) == ("task", 2)
    assert (counts["nacked"], counts["redelivered"], counts["in_flight"]) == (1, 1, 1)


async def _consumers_waiting(server: RunningRelay) -> bool:
    return bool((await server.channel("jobs"))["consumers"] == 2)


async def test_a_late_ack_is_refused_and_the_job_is_redelivered_once(
    acked_relay: AckedRelay,
) -> None:
    """Past ``ack_timeout_seconds`` the job goes to another worker; the first worker's ack is
    refused (``not_in_flight``) and counted; the second's ack ends it: no third delivery."""
    server = await acked_relay(ack_timeout_seconds=0.3, max_in_flight=1)
    async with worker(server) as slow, worker(server) as quick:
        await subscribed(slow)
        await subscribed(quick)
        await publish(server, "jobs", "task")
        # Whoever got it first: the other one gets it once the first one's time is up.
        first_job = await _first_job(slow, quick)
        holder, other = (slow, quick) if first_job[0] is slow else (quick, slow)
        again = await next_job(other)
        assert (again.payload, again.deliveries) == ("task", 2)
        await holder.send_message(framing.ack(first_job[1].delivery_id))
        refusal = await next_control(holder)
        assert (refusal.kind, refusal.fields["reason"]) == ("refused", "not_in_flight")
        await other.send_message(framing.ack(again.delivery_id))
        counts = await wait_until(lambda: _acked(server, 1))
    assert (counts["timed_out"], counts["redelivered"], counts["refused"]) == (1, 1, 1)
    assert counts["in_flight"] == 0


async def _first_job(*sockets: WebSocketConnection) -> tuple[WebSocketConnection, Job]:
    found: list[tuple[WebSocketConnection, Job]] = []
    async with trio.open_nursery() as nursery:

        async def watch(ws: WebSocketConnection) -> None:
            found.append((ws, await next_job(ws)))
            nursery.cancel_scope.cancel()

        for ws in sockets:
            nursery.start_soon(watch, ws)
    return found[0]


async def test_max_in_flight_holds_the_relay_back_until_an_ack(acked_relay: AckedRelay) -> None:
    """With two jobs unacked a worker gets no third: the other three wait in the queue; an
    ack lets exactly one more out."""
    server = await acked_relay(max_in_flight=2)
    async with worker(server) as ws:
        await subscribed(ws)
        await publish(server, "jobs", "1", "2", "3", "4", "5")
        first, second = await next_job(ws), await next_job(ws)
        assert [first.payload, second.payload] == ["1", "2"]
        statistics = await wait_until(lambda: _held(server, in_flight=2, waiting=3))
        assert statistics["messages_out"] == 2
        await ws.send_message(framing.ack(first.delivery_id))
        third = await next_job(ws)
        assert third.payload == "3"
        await wait_until(lambda: _held(server, in_flight=2, waiting=2))


async def _held(server: RunningRelay, *, in_flight: int, waiting: int) -> dict[str, Any] | None:
    statistics = await server.channel("jobs")
    if statistics["jobs"]["in_flight"] == in_flight and await queued(server) == waiting:
        return statistics
    return None


async def test_a_job_that_fails_max_deliveries_times_lands_on_the_dead_letter_channel(
    acked_relay: AckedRelay,
) -> None:
    """Nacked ``max_deliveries`` times, the job is published on ``<channel>.dead`` with its
    payload (binary in base64), its deliveries and each one's end; it is not handed out
    again."""
    server = await acked_relay()
    async with server.websocket("/ws/consumer/jobs.dead") as dead, worker(server) as ws:
        await subscribed(ws)
        await publish(server, "jobs", b"\xffpoison")
        for attempt in (1, 2, 3):
            job = await next_job(ws)
            assert job.deliveries == attempt
            await ws.send_message(framing.nack(job.delivery_id))
        letter = await dead.get_message()
        await publish(server, "jobs", "next")
        assert (await next_job(ws)).payload == "next"  # not the dead one again
        assert (await jobs_of(server))["dead_lettered"] == 1
        metrics = (await server.http.get("/metrics")).text
    assert 'triorelay_jobs_total{namespace="jobs",outcome="dead_lettered"} 1.0' in metrics
    assert 'triorelay_jobs_total{namespace="jobs",outcome="nacked"} 3.0' in metrics
    assert 'triorelay_jobs_in_flight{namespace="jobs"} 1.0' in metrics
    assert isinstance(letter, str)
    payload, fields = framing.read_dead_letter(letter)
    assert payload == b"\xffpoison"
    assert (fields["channel"], fields["seq"], fields["deliveries"]) == ("jobs", 1, 3)
    assert fields["reason"] == "max_deliveries"
    assert [entry["outcome"] for entry in fields["history"]] == ["nacked"] * 3


async def test_a_dead_letter_stays_within_the_message_limit(acked_relay: AckedRelay) -> None:
    """A binary job of 0.8 MiB is within max_message_bytes (1 MiB), its letter in base64 is
    not: the letter goes without the job (payload null, payload_bytes its size), so that the
    project's own client, bounded by the same limit, still reads it (it closed with 1009,
    for good, on every resume)."""
    server = await acked_relay(max_deliveries=1)
    job_bytes = 800 * 1024
    limit = server.relay.settings.max_message_bytes
    async with (
        subscribe(server.ws_url, "jobs.dead", ping_interval_seconds=None) as dead,
        worker(server) as ws,
    ):
        await subscribed(ws)
        await publish(server, "jobs", b"\x01" * job_bytes)
        job = await next_job(ws)
        await ws.send_message(framing.nack(job.delivery_id))
        with trio.fail_after(10):
            letter = await dead.__anext__()
    assert isinstance(letter.payload, str)
    assert len(letter.payload) <= limit
    read = read_dead_letter(letter)
    assert (read.payload, read.payload_bytes) == (None, job_bytes)
    assert (read.channel, read.seq, read.deliveries) == ("jobs", 1, 1)


async def test_a_worker_that_leaves_gives_back_everything_it_held_at_once(
    acked_relay: AckedRelay,
) -> None:
    """Cut without a close, a worker's jobs go to the next worker at once (not after the ack
    timeout), each with ``consumer left`` in its history."""
    server = await acked_relay(max_deliveries=2)
    async with server.websocket("/ws/consumer/jobs.dead") as dead:
        async with worker(server) as ws:
            await subscribed(ws)
            await publish(server, "jobs", "a", "b")
            assert [(await next_job(ws)).payload for _ in range(2)] == ["a", "b"]
            await ws._close_stream()  # a TCP close with no WebSocket close: a crash
        async with worker(server) as next_worker:
            await subscribed(next_worker)
            again = [await next_job(next_worker) for _ in range(2)]
            assert sorted(job.payload for job in again) == ["a", "b"]
            assert {job.deliveries for job in again} == {2}
            await next_worker.send_message(framing.nack(again[0].delivery_id))
            letter = await dead.get_message()
    assert isinstance(letter, str)
    _, fields = framing.read_dead_letter(letter)
    assert [entry["outcome"] for entry in fields["history"]] == ["consumer left", "nacked"]


async def test_what_is_not_an_ack_is_refused_and_changes_nothing(acked_relay: AckedRelay) -> None:
    """A malformed ack, an unknown id, a binary frame: each answered ``refused``; the job
    stays in flight and its real ack still works."""
    server = await acked_relay()
    async with worker(server) as ws:
        await subscribed(ws)
        await publish(server, "jobs", "task")
        job = await next_job(ws)
        nested = '{"triorelay":' + "[" * 100_000 + "]" * 100_000 + "}"  # RecursionError
        too_late = '{"triorelay":"nack","id":1,"delay_seconds":86401}'
        bad_frames = ['{"triorelay":"ack","id":"1"}', "done", b"\x01", framing.ack(999)]
        for bad in [
            *bad_frames,
            nested,
            too_late,
            '{"triorelay":"nack","id":1,"delay_seconds":-1}',
        ]:
            await ws.send_message(bad)
            refusal = await next_control(ws)
            assert refusal.kind == "refused", bad
        # Members in another order, and white space, are still an ack.
        await ws.send_message(f' {{ "id": {job.delivery_id}, "triorelay": "ack" }}')
        await wait_until(lambda: _acked(server, 1))
        assert (await jobs_of(server))["refused"] == 7


async def test_a_raw_consumer_of_an_acked_channel_is_acked_by_delivery(
    acked_relay: AckedRelay,
) -> None:
    """Without the framing a consumer gets the payloads as published; each is done once
    written to its socket (today's queue semantics): nothing comes back."""
    server = await acked_relay()
    async with server.websocket("/ws/consumer/jobs") as raw:
        await publish(server, "jobs", "x", "y")
        assert [await raw.get_message(), await raw.get_message()] == ["x", "y"]
    async with worker(server) as ws:
        await subscribed(ws)
        await publish(server, "jobs", "z")
        assert (await next_job(ws)).payload == "z"


async def test_resume_parameters_are_refused_on_an_acked_channel(acked_relay: AckedRelay) -> None:
    """Jobs have no positions: ``?since=`` is a 400 before the upgrade."""
    server = await acked_relay()
    status, body = await refused_upgrade(
        server.port,
        "/ws/consumer/jobs?since=a:1",
        [("Sec-WebSocket-Protocol", framing.SUBPROTOCOL)],
    )
    assert status == 400
    assert b"positions" in body


async def test_a_producer_ack_means_the_job_is_queued(acked_relay: AckedRelay) -> None:
    """``?ack=id``: the producer's ack comes once the job is queued (Redis: the ``XADD``
    returned), before any consumer took it; a consumer that comes later gets it."""
    server = await acked_relay()
    assert await publish(server, "jobs", "durable") == [1]
    assert await queued(server) == 1
    async with worker(server) as ws:
        await subscribed(ws)
        assert (await next_job(ws)).payload == "durable"


async def test_a_returned_job_waits_out_the_redelivery_backoff(acked_relay: AckedRelay) -> None:
    """Nacked without a delay, a job comes back after ``redelivery_backoff_seconds``; a
    nack's own ``delay_seconds`` wins."""
    server = await acked_relay(redelivery_backoff_seconds=0.3)
    async with worker(server) as ws:
        await subscribed(ws)
        await publish(server, "jobs", "task")
        job = await next_job(ws)
        nacked = trio.current_time()
        await ws.send_message(framing.nack(job.delivery_id))
        again = await next_job(ws)
        assert trio.current_time() - nacked >= 0.3
        nacked = trio.current_time()
        await ws.send_message(framing.nack(again.delivery_id, 0))
        assert (await next_job(ws)).deliveries == 3
        assert trio.current_time() - nacked < 0.3


async def test_a_dead_letter_that_cannot_be_published_waits_holding_its_place(
    start_relay: StartRelay, broker: str
) -> None:
    """The configured dead-letter channel is a full queue: the dead job waits, counted in
    flight and against ``max_in_flight`` (the worker gets nothing else meanwhile), is given
    back each time the publish gives up, and lands once there is room."""
    channels = {
        "graveyard": {"mode": "queue", "queue_buffer_messages": 1},
        "jobs": {
            **RULE,
            "max_in_flight": 1,
            "max_deliveries": 1,
            "dead_letter_channel": "graveyard",
        },
    }
    server = await start_relay(broker=broker, channels=channels, block_timeout_seconds=0.2)
    await publish(server, "graveyard", "filler")  # the graveyard is full
    async with worker(server) as ws:
        await subscribed(ws)
        await publish(server, "jobs", "poison", "next")
        poison = await next_job(ws)
        await ws.send_message(framing.nack(poison.delivery_id))  # its last delivery
        statistics = await wait_until(lambda: _held(server, in_flight=1, waiting=1))
        assert statistics["jobs"]["dead_lettered"] == 0
        async with server.websocket("/ws/consumer/graveyard") as graveyard:
            assert await graveyard.get_message() == "filler"
            letter = await graveyard.get_message()
        assert isinstance(letter, str)
        payload, fields = framing.read_dead_letter(letter)
        assert (payload, fields["channel"]) == ("poison", "jobs")
        assert (await next_job(ws)).payload == "next"


async def test_an_acked_queue_name_must_leave_room_for_its_dead_letter_channel(
    acked_relay: AckedRelay,
) -> None:
    """``<name>.dead`` must be a channel name too: 123 characters at most, said plainly."""
    server = await acked_relay()
    status, body = await refused_upgrade(server.port, "/ws/producer/jobs" + "x" * 120)
    assert status == 400
    assert b"at most 123 characters" in body


async def test_a_job_in_flight_at_a_graceful_shutdown_comes_back_counted_on_another_relay(
    start_relay: StartRelay, redis_server: RedisServer
) -> None:
    """Redis: a relay shutting down gives back the job its framed worker held at once (not
    after the claim time: 600 s here), counted as a delivery and with ``consumer left`` in its
    history: a worker of another relay on the same Redis gets it with deliveries 2."""
    settings: dict[str, Any] = {
        "broker": redis_server.url,
        "redis_claim_idle_seconds": 600,
        "channels": {"*.dead": {"mode": "broadcast"}, "jobs*": {**RULE, "max_deliveries": 2}},
    }
    stopping, staying = await start_relay(**settings), await start_relay(**settings)
    async with worker(stopping) as ws:
        await subscribed(ws)
        await publish(stopping, "jobs", "task")
        assert (await next_job(ws)).deliveries == 1
        stopping.stop.set()
        assert (await closed_with(ws))[0] == 1001
    async with staying.websocket("/ws/consumer/jobs.dead") as dead, worker(staying) as again:
        await subscribed(again)
        with trio.fail_after(10):
            job = await next_job(again)
        assert (job.payload, job.deliveries) == ("task", 2)
        await again.send_message(framing.nack(job.delivery_id))
        letter = await dead.get_message()
    assert isinstance(letter, str)
    _, fields = framing.read_dead_letter(letter)
    history = [(entry["consumer"], entry["outcome"]) for entry in fields["history"]]
    assert [outcome for _, outcome in history] == ["consumer left", "nacked"]
    assert history[0][0].startswith(f"{stopping.relay.hub.broker.node}:")
