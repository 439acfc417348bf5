"""``/ws/consumer/{c}`` with the ``triorelay.v1`` framing: positions, resume, the seam."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.lowlevel
from trio_websocket import WebSocketConnection

from tests.conftest import StartRelay
from tests.helpers import RunningRelay, closed_with, refused_upgrade
from triorelay import framing
from triorelay.framing import Control, Message, Position

pytestmark = [pytest.mark.both_paths, pytest.mark.timeout(30)]


def framed(server: RunningRelay, channel: str, query: str = "") -> Any:
    path = f"/ws/consumer/{channel}" + (f"?{query}" if query else "")
    return server.websocket(path, subprotocols=[framing.SUBPROTOCOL])


async def receive(ws: WebSocketConnection) -> framing.Frame:
    return framing.decode(await ws.get_message())


async def subscribed(ws: WebSocketConnection) -> dict[str, Any]:
    frame = await receive(ws)
    assert isinstance(frame, Control), frame
    assert frame.kind == "subscribed", frame
    return frame.fields


async def publish(server: RunningRelay, channel: str, *payloads: str | bytes) -> list[int]:
    offsets = []
    async with server.websocket(f"/ws/producer/{channel}?ack=id") as producer:
        for payload in payloads:
            await producer.send_message(payload)
            offsets.append(json.loads(await producer.get_message())["id"])
    return offsets


async def test_a_framed_consumer_gets_each_message_with_its_channel_and_offset(
    start_relay: StartRelay,
) -> None:
    """The subprotocol is chosen; ``subscribed`` comes first; then each message is a frame
    ``m <channel> <offset>\\n<payload>``, text in a text frame, binary in a binary one."""
    server = await start_relay()
    async with framed(server, "news") as ws:
        assert ws.subprotocol == framing.SUBPROTOCOL
        first = await subscribed(ws)
        assert (first["offset"], first["recovering"], first["recovered"]) == (0, False, False)
        await publish(server, "news", "hello", b"\x00\xff")
        raw_text, raw_binary = await ws.get_message(), await ws.get_message()
    assert raw_text == "m news 1\nhello"
    assert raw_binary == b"m news 2\n\x00\xff"
    assert framing.decode(raw_binary) == Message("news", 2, b"\x00\xff")


async def test_a_raw_consumer_beside_a_framed_one_still_gets_the_bytes_as_published(
    start_relay: StartRelay,
) -> None:
    """Without the subprotocol nothing changes: the asyncio version's clients keep working."""
    server = await start_relay()
    async with server.websocket("/ws/consumer/mix") as raw, framed(server, "mix") as ws:
        await subscribed(ws)
        await publish(server, "mix", "plain")
        assert await raw.get_message() == "plain"
        assert await receive(ws) == Message("mix", 1, "plain")
        assert raw.subprotocol is None


async def test_resuming_replays_what_was_missed_then_goes_on_live(
    start_relay: StartRelay,
) -> None:
    """A consumer back with ``?since=`` gets every message after its position, then the
    live stream: no gap and no duplicate."""
    server = await start_relay()
    async with framed(server, "news") as ws:
        epoch = (await subscribed(ws))["epoch"]
        await publish(server, "news", "one", "two")
        assert [await receive(ws) for _ in range(2)][-1] == Message("news", 2, "two")
    await publish(server, "news", "three", "four")
    async with framed(server, "news", f"since={epoch}:2") as ws:
        result = await subscribed(ws)
        assert result | {"channel": "news"} == {
            "triorelay": "subscribed",
            "channel": "news",
            "epoch": epoch,
            "offset": 4,
            "recovering": True,
            "recovered": True,
            "reason": None,
            "replayed": 2,
        }
        replayed = [await receive(ws) for _ in range(2)]
        await publish(server, "news", "five")
        live = await receive(ws)
        stats = await server.channel("news")
    assert replayed == [Message("news", 3, "three"), Message("news", 4, "four")]
    assert live == Message("news", 5, "five")
    assert stats["recoveries"] == {"recovered": 1}


async def test_a_resume_that_cannot_be_done_says_why_and_goes_on_live(
    start_relay: StartRelay,
) -> None:
    """Best effort: ``recovered: false`` with the reason, the stream goes on from now."""
    server = await start_relay(history_messages=2)
    await publish(server, "news", "1", "2", "3", "4", "5")
    epoch = (await server.relay.hub.recover("news", None)).position.epoch
    async with framed(server, "news", f"since={epoch}:1") as ws:
        result = await subscribed(ws)
        await publish(server, "news", "6")
        assert await receive(ws) == Message("news", 6, "6")
    assert (result["recovered"], result["reason"], result["offset"]) == (False, "trimmed", 5)


async def test_recover_required_closes_with_4410_and_the_reason(
    start_relay: StartRelay,
) -> None:
    """``recover=required``: a resume that cannot be done closes the consumer with 4410."""
    server = await start_relay()
    await publish(server, "news", "1")
    async with framed(server, "news", "since=another:1&recover=required") as ws:
        assert await closed_with(ws) == (4410, "recovery failed: epoch")


@pytest.mark.parametrize(
    ("query", "subprotocols", "expected"),
    [
        ("since=e:1", [], b"since and recover need the triorelay.v1 subprotocol"),
        ("recover=required", [], b"since and recover need the triorelay.v1 subprotocol"),
        ("since=bad", [framing.SUBPROTOCOL], b"since: a position is epoch:offset"),
        ("since=e:-1", [framing.SUBPROTOCOL], b"since: a position's offset is a whole number"),
        ("since=e:1&since=e:2", [framing.SUBPROTOCOL], b"since must be given once"),
        ("recover=maybe", [framing.SUBPROTOCOL], b"recover must be one of best_effort, required"),
    ],
)
async def test_bad_resume_parameters_are_refused_with_400(
    start_relay: StartRelay, query: str, subprotocols: list[str], expected: bytes
) -> None:
    """A malformed position, or resume parameters without the framing: 400 and why."""
    server = await start_relay()
    headers = [("Sec-WebSocket-Protocol", ", ".join(subprotocols))] if subprotocols else []
    status, body = await refused_upgrade(server.port, f"/ws/consumer/news?{query}", headers)
    assert status == 400
    assert body.startswith(expected)


async def test_the_framing_is_refused_on_a_queue_channel(start_relay: StartRelay) -> None:
    """Queue messages have no position: the framing is for broadcast and acked queues."""
    server = await start_relay(channels={"jobs.*": {"mode": "queue"}})
    headers = [("Sec-WebSocket-Protocol", framing.SUBPROTOCOL)]
    status, body = await refused_upgrade(server.port, "/ws/consumer/jobs.a", headers)
    assert (status, body) == (
        400,
        b"the triorelay.v1 framing is for broadcast channels and acked queues",
    )


async def test_messages_published_while_resuming_are_neither_lost_nor_repeated(
    start_relay: StartRelay,
) -> None:
    """A producer publishing all along while consumers resume from positions before it: each
    consumer ends with every offset once, in order (the seam is exact)."""
    server = await start_relay()
    total = 300
    async with server.websocket("/ws/producer/seam?ack=id") as producer:

        async def produce() -> None:
            for i in range(1, total + 1):
                await producer.send_message(f"m{i}")
                await producer.get_message()

        async def resume_at(offset: int, epoch: str) -> list[int]:
            seen: list[int] = []
            async with framed(server, "seam", f"since={epoch}:{offset}") as ws:
                await subscribed(ws)
                while not seen or seen[-1] < total:
                    frame = await receive(ws)
                    assert isinstance(frame, Message)
                    seen.append(frame.offset)
            return seen

        epoch = (await server.relay.hub.recover("seam", None)).position.epoch
        results: list[list[int]] = []

        async def run(offset: int) -> None:
            results.append(await resume_at(offset, epoch))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            for start in (0, 0, 0):
                nursery.start_soon(run, start)
                await trio.lowlevel.checkpoint()  # let messages go by before the next one
    assert results
    assert all(seen == list(range(1, total + 1)) for seen in results)


async def test_the_position_survives_the_consumer_leaving_and_the_channel_going(
    start_relay: StartRelay,
) -> None:
    """Nobody attached (the channel is gone from the hub): its history stays, so a consumer
    coming back later resumes."""
    server = await start_relay()
    async with framed(server, "quiet") as ws:
        epoch = (await subscribed(ws))["epoch"]
    await publish(server, "quiet", "while away")
    assert server.relay.hub.channel_statistics("quiet") is None
    async with framed(server, "quiet", f"since={Position(epoch, 0)}") as ws:
        assert (await subscribed(ws))["replayed"] == 1
        assert await receive(ws) == Message("quiet", 1, "while away")


def test_a_message_from_an_epoch_left_behind_is_stale_not_new() -> None:
    """The cursor moved on to a new epoch: a message still buffered from the old one is
    dropped, not taken for yet another new epoch (which would flip the client back)."""
    from triorelay.hub import Entry
    from triorelay.routes.positioned import Cursor

    cursor = Cursor(Position("old", 5))
    assert cursor.admit(Entry("x", 1, 1, "new")) is None  # a new epoch: a gap first
    assert cursor.admit(Entry("y", 1, 6, "old")) is False  # left behind
    assert cursor.admit(Entry("z", 1, 2, "new")) is True
    assert (cursor.epoch, cursor.offset) == ("new", 2)
