"""The recovery table: resuming from a position, the same cases on every broker.

Each test runs on the memory broker and on a real Redis (the ``backend`` fixture), through
the broker interface (:meth:`Broker.recover`) and, for ``recover=required``, through
:func:`triorelay.routes.positioned.subscribe` on a hub.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from tests.brokers.conftest import HANG_GUARD_SECONDS, Backend, Deliveries
from tests.redis_server import RedisServer
from triorelay.brokers import Broker
from triorelay.errors import RecoveryFailed
from triorelay.framing import Position
from triorelay.routes.positioned import Resume, subscribe


async def publish_texts(broker: Broker, name: str, count: int, start: int = 1) -> None:
    published: list[int] = []
    for i in range(start, start + count):
        await broker.publish(name, "broadcast", [f"m{i}"], published)


def texts(first: int, last: int) -> tuple[tuple[int, str], ...]:
    return tuple((i, f"m{i}") for i in range(first, last + 1))


async def started(backend: Backend, nursery: trio.Nursery, **overrides: Any) -> Broker:
    return await backend.start_broker(nursery, Deliveries(), **overrides)


async def test_an_empty_channel_has_a_position_at_offset_0(
    backend: Backend, nursery: trio.Nursery
) -> None:
    """A channel never published to: offset 0 in an epoch that stays the same, so a consumer
    that resumes from it gets the first message."""
    broker = await started(backend, nursery)
    with trio.fail_after(HANG_GUARD_SECONDS):
        first = await broker.recover("empty", None)
        assert first.position.offset == 0
        assert not first.recovered
        again = await broker.recover("empty", first.position)
        assert again.recovered
        assert again.entries == ()
        assert again.position == first.position
        await publish_texts(broker, "empty", 1)
        after = await broker.recover("empty", first.position)
    assert after.recovered
    assert after.entries == texts(1, 1)
    assert after.position == Position(first.position.epoch, 1)


async def test_resume_from_the_middle_replays_every_message_after_it(
    backend: Backend, nursery: trio.Nursery
) -> None:
    """Positions are contiguous: resuming from offset 4 of 10 gives 5..10, in order."""
    broker = await started(backend, nursery)
    with trio.fail_after(HANG_GUARD_SECONDS):
        await publish_texts(broker, "news", 10)
        epoch = (await broker.recover("news", None)).position.epoch
        recovery = await broker.recover("news", Position(epoch, 4))
    assert recovery.recovered
    assert recovery.reason is None
    assert recovery.entries == texts(5, 10)
    assert recovery.position == Position(epoch, 10)


async def test_resume_keeps_text_as_text_and_binary_as_binary(
    backend: Backend, nursery: trio.Nursery
) -> None:
    """A replayed message is the published payload: ``str`` for text, ``bytes`` for binary."""
    broker = await started(backend, nursery)
    payloads: list[str | bytes] = ["text", b"\x00\xffbinary", "", b"", "ünïcødé"]
    with trio.fail_after(HANG_GUARD_SECONDS):
        await broker.publish("mixed", "broadcast", payloads, [])
        epoch = (await broker.recover("mixed", None)).position.epoch
        recovery = await broker.recover("mixed", Position(epoch, 0))
    assert [payload for _, payload in recovery.entries] == payloads
    assert [type(p) for _, p in recovery.entries] == [type(p) for p in payloads]


async def test_resume_from_the_latest_position_is_recovered_with_nothing_to_replay(
    backend: Backend, nursery: trio.Nursery
) -> None:
    """Nothing was missed: ``recovered`` with 0 messages."""
    broker = await started(backend, nursery)
    with trio.fail_after(HANG_GUARD_SECONDS):
        await publish_texts(broker, "news", 3)
        position = (await broker.recover("news", None)).position
        recovery = await broker.recover("news", position)
    assert recovery.recovered
    assert recovery.entries == ()


async def test_a_position_older_than_the_history_is_trimmed(
    backend: Backend, nursery: trio.Nursery
) -> None:
    """The channel keeps its last 5 messages: resuming from offset 2 of 10 cannot be done."""
    broker = await started(backend, nursery, history_messages=5)
    with trio.fail_after(HANG_GUARD_SECONDS):
        await publish_texts(broker, "news", 10)
        epoch = (await broker.recover("news", None)).position.epoch
        trimmed = await broker.recover("news", Position(epoch, 2))
        kept = await broker.recover("news", Position(epoch, 5))
    assert (trimmed.recovered, trimmed.reason, trimmed.entries) == (False, "trimmed", ())
    assert trimmed.position == Position(epoch, 10)
    assert kept.recovered
    assert kept.entries == texts(6, 10)


async def test_a_position_older_than_the_history_bytes_is_trimmed(
    backend: Backend, nursery: trio.Nursery
) -> None:
    """``history_bytes`` bounds what is kept too: 10 messages of 100 bytes in 450 bytes
    (memory counts about 100 bytes of overhead each): an old position is trimmed."""
    broker = await started(backend, nursery, history_bytes=450, max_message_bytes=100)
    with trio.fail_after(HANG_GUARD_SECONDS):
        await broker.publish("big", "broadcast", ["x" * 100] * 10, [])
        epoch = (await broker.recover("big", None)).position.epoch
        recovery = await broker.recover("big", Position(epoch, 1))
        recent = await broker.recover("big", Position(epoch, 8))
    assert (recovery.recovered, recovery.reason) == (False, "trimmed")
    assert recent.recovered
    assert [offset for offset, _ in recent.entries] == [9, 10]


async def test_an_expired_history_cannot_be_resumed(
    backend: Backend, nursery: trio.Nursery
) -> None:
    """No publish for ``history_ttl_seconds``: the messages are gone (``expired``), the
    position is kept (a consumer at the last offset has missed nothing)."""
    broker = await started(backend, nursery, history_ttl_seconds=60)
    with trio.fail_after(HANG_GUARD_SECONDS):
        await publish_texts(broker, "news", 5)
        top = (await broker.recover("news", None)).position
        await backend.age_history(broker, "news", seconds=61)
        recovery = await broker.recover("news", Position(top.epoch, 2))
        latest = await broker.recover("news", top)
    assert (recovery.recovered, recovery.reason, recovery.position) == (False, "expired", top)
    assert latest.recovered


async def test_after_expiry_new_messages_go_on_in_the_same_epoch(
    backend: Backend, nursery: trio.Nursery
) -> None:
    """A channel published to again after its history expired: offsets go on; a position
    from before the expiry is ``expired``, one after it is recovered."""
    broker = await started(backend, nursery, history_ttl_seconds=60)
    with trio.fail_after(HANG_GUARD_SECONDS):
        await publish_texts(broker, "news", 5)
        await backend.age_history(broker, "news", seconds=61)
        await publish_texts(broker, "news", 2, start=6)
        recovery = await broker.recover("news", None)
        epoch = recovery.position.epoch
        old = await broker.recover("news", Position(epoch, 3))
        new = await broker.recover("news", Position(epoch, 5))
    assert recovery.position.offset == 7
    assert (old.recovered, old.reason) == (False, "expired")
    assert new.recovered
    assert new.entries == texts(6, 7)


async def test_a_position_from_another_epoch_is_detected(
    backend: Backend, nursery: trio.Nursery
) -> None:
    """The history was lost (memory: the relay restarted; Redis: it lost its data): the
    channel numbers from 1 again in a new epoch, and an old position is never misread."""
    broker = await started(backend, nursery)
    with trio.fail_after(HANG_GUARD_SECONDS):
        await publish_texts(broker, "news", 5)
        before = (await broker.recover("news", None)).position
        broker = await backend.lose_everything(nursery, broker)
        await publish_texts(broker, "news", 7)
        recovery = await broker.recover("news", Position(before.epoch, 3))
    assert (recovery.recovered, recovery.reason) == (False, "epoch")
    assert recovery.position.epoch != before.epoch
    assert recovery.position.offset == 7


async def test_a_future_offset_is_detected(backend: Backend, nursery: trio.Nursery) -> None:
    """An offset past the channel's last message (a client bug, or a forged position)."""
    broker = await started(backend, nursery)
    with trio.fail_after(HANG_GUARD_SECONDS):
        await publish_texts(broker, "news", 3)
        epoch = (await broker.recover("news", None)).position.epoch
        recovery = await broker.recover("news", Position(epoch, 4))
    assert (recovery.recovered, recovery.reason) == (False, "future")


async def test_more_missed_messages_than_recovery_max_messages_is_too_many(
    backend: Backend, nursery: trio.Nursery
) -> None:
    """``recovery_max_messages`` = 3: 5 missed messages are not replayed; 3 are."""
    broker = await started(backend, nursery, recovery_max_messages=3)
    with trio.fail_after(HANG_GUARD_SECONDS):
        await publish_texts(broker, "news", 10)
        epoch = (await broker.recover("news", None)).position.epoch
        too_many = await broker.recover("news", Position(epoch, 5))
        three = await broker.recover("news", Position(epoch, 7))
    assert (too_many.recovered, too_many.reason) == (False, "too_many")
    assert three.recovered
    assert three.entries == texts(8, 10)


async def test_a_channel_without_history_cannot_be_resumed(
    backend: Backend, nursery: trio.Nursery
) -> None:
    """``history_messages = 0``: a consumer that missed something is told ``disabled``."""
    broker = await started(backend, nursery, history_messages=0)
    with trio.fail_after(HANG_GUARD_SECONDS):
        await publish_texts(broker, "news", 3)
        epoch = (await broker.recover("news", None)).position.epoch
        recovery = await broker.recover("news", Position(epoch, 1))
    assert (recovery.recovered, recovery.reason) == (False, "disabled")


FAILING: dict[str, dict[str, Any]] = {
    "trimmed": {"history_messages": 2},
    "too_many": {"recovery_max_messages": 2},
    "future": {},
    "disabled": {"history_messages": 0},
    "epoch": {},
    "expired": {"history_ttl_seconds": 60},
}


@pytest.mark.parametrize("reason", list(FAILING))
async def test_recover_required_refuses_each_failing_case(
    backend: Backend, nursery: trio.Nursery, reason: str
) -> None:
    """``recover=required``: each way a resume can fail raises RecoveryFailed naming it
    (the route turns it into close 4410, or HTTP 410 for an event stream); best effort gets
    the same reason and goes on."""
    hub = await backend.start_hub(nursery, **FAILING[reason])
    with trio.fail_after(HANG_GUARD_SECONDS):
        await publish_texts(hub.broker, "news", 5)
        top = (await hub.broker.recover("news", None)).position
        since = {
            "future": Position(top.epoch, 9),
            "epoch": Position("another", 1),
        }.get(reason, Position(top.epoch, 1))
        if reason == "expired":
            await backend.age_history(hub.broker, "news", seconds=61)
        with hub.attach_consumer("news", positioned=True) as consumer:
            await hub.broker.wait_watching("news")
            with pytest.raises(RecoveryFailed, match=f"recovery failed: {reason}"):
                await subscribe(hub, consumer, Resume(since, required=True))
            recovery, cursor = await subscribe(hub, consumer, Resume(since, required=False))
        assert recovery.reason == reason
        assert (cursor.epoch, cursor.offset) == (top.epoch, top.offset)
        stats = hub.channel_statistics("news")
        assert stats is None or stats.recoveries == {reason: 2}


async def test_a_redis_position_is_shared_by_every_relay(redis_server: RedisServer) -> None:
    """Redis: two relays on one Redis see the same epoch and offsets (a consumer resumes on
    either relay)."""
    backend = Backend("redis", redis_server.url)
    async with trio.open_nursery() as nursery:
        one = await started(backend, nursery)
        two = await started(backend, nursery)
        with trio.fail_after(HANG_GUARD_SECONDS):
            await publish_texts(one, "news", 4)
            await publish_texts(two, "news", 2, start=5)
            position = (await one.recover("news", None)).position
            recovery = await two.recover("news", Position(position.epoch, 2))
        nursery.cancel_scope.cancel()
    assert position.offset == 6
    assert recovery.recovered
    assert recovery.entries == texts(3, 6)


async def test_a_redis_restart_with_its_data_still_starts_a_new_epoch(tmp_path: Path) -> None:
    """Redis restarted and came back with its data (an append-only file, or a snapshot that
    may be older than the last publishes): the channel goes on in a new epoch, so that no
    offset is ever given to two messages and an old position is told ``epoch``."""
    server = RedisServer(persist_in=tmp_path)
    await server.start()
    try:
        backend = Backend("redis", server.url)
        async with trio.open_nursery() as nursery:
            broker = await started(backend, nursery, broker_reconnect_max_seconds=0.1)
            with trio.fail_after(HANG_GUARD_SECONDS):
                await publish_texts(broker, "kept", 5)
                before = (await broker.recover("kept", None)).position
                await server.kill()
                await server.start()
                published: list[int] = []
                await broker.publish("kept", "broadcast", ["after"], published)
                recovery = await broker.recover("kept", before)
            nursery.cancel_scope.cancel()
    finally:
        await server.kill()
    assert published == [1]
    assert (recovery.recovered, recovery.reason) == (False, "epoch")
    assert int(recovery.position.epoch) > int(before.epoch)
