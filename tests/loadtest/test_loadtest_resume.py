"""The ``resume`` scenario: the frames it reads (the relay's own codec writes them here), the
check of a replay, its percentiles, and seconds-long runs against a real relay."""

from __future__ import annotations

import json

import pytest

from loadtest.cli import build_parser, main
from loadtest.codec import encode
from loadtest.replay import (
    SUBPROTOCOL,
    ReplayCheck,
    ResumeError,
    Subscribed,
    nearest_rank,
    parse_message,
    parse_subscribed,
    timing_summary,
)
from loadtest.report import check_result
from loadtest.resume import CONNECTIONS_PER_REPEAT, run_resume
from tests.conftest import StartRelay
from tests.redis_server import RedisServer
from triorelay import framing
from triorelay.framing import Position

pytestmark = pytest.mark.timeout(30)

RUN = "0badcafe"
SINCE = Subscribed("c", "E1", 7, False, False, None, 0)


def _subscribed(offset: int, replayed: int, *, recovered: bool = True, epoch: str = "E1") -> str:
    reason = None if recovered else "trimmed"
    return framing.subscribed(
        "c",
        Position(epoch, offset),
        recovering=True,
        recovered=recovered,
        reason=reason,
        replayed=replayed,
    )


def _message(offset: int, seq: int, run: str = RUN) -> str | bytes:
    return framing.encode_message("c", offset, encode(run, 0, seq, 1))


def _replay(missed: int) -> list[str | bytes]:
    return [_subscribed(7 + missed, missed)] + [_message(8 + n, n) for n in range(missed)]


def test_the_frames_read_are_the_relays() -> None:
    """The subprotocol is triorelay's; a frame the relay's codec writes reads back the same."""
    assert SUBPROTOCOL == framing.SUBPROTOCOL
    assert parse_message("m news 12\nhello") == ("news", 12, "hello")
    raw = framing.encode_message("news", 3, b"\x00\n\xff")
    assert parse_message(raw) == ("news", 3, b"\x00\n\xff")
    got = parse_subscribed(_subscribed(9, 2))
    assert (got.position, got.recovered, got.replayed) == ("E1:9", True, 2)


def test_a_replay_of_exactly_the_missed_messages_in_order_passes() -> None:
    """Subscribed saying 3 follow, then offsets 8, 9, 10 holding messages 0, 1, 2: done."""
    check = ReplayCheck("c", SINCE, 3, RUN)
    assert [check.feed(frame) for frame in _replay(3)] == [False, False, False, True]
    assert check.received == 3


@pytest.mark.parametrize(
    ("frames", "error"),
    [
        ([_subscribed(10, 3, recovered=False)], "not done: reason 'trimmed'"),
        ([_subscribed(9, 2)], "2 replayed up to E1:9"),
        ([_subscribed(10, 3, epoch="E2")], "up to E2:10"),
        ([_message(8, 0)], "not a control message"),
        ([_subscribed(10, 3), _message(9, 1)], "at c 9, expected c 8"),
        ([_subscribed(10, 3), _message(8, 0), _message(8, 0)], "at c 8, expected c 9"),
        ([_subscribed(10, 3), _message(8, 1)], "holds message 1 of run 0badcafe, expected 0"),
        ([_subscribed(10, 3), _message(8, 0, "feedf00d")], "of run feedf00d"),
        ([_subscribed(10, 3), framing.dropped("c", 1, 1)], "a control message instead"),
        ([_subscribed(10, 3), "m c 8\nnot json"], "holds another payload"),
        ([*_replay(3), _message(11, 3)], "a frame after the last replayed message"),
    ],
)
def test_anything_but_the_missed_messages_in_order_fails(
    frames: list[str | bytes], error: str
) -> None:
    """A resume not done, another count or epoch, a gap, a repeat, another message, a control
    message, one frame too many: each fails at the first frame that differs, saying so."""
    check = ReplayCheck("c", SINCE, 3, RUN)
    *before, last = frames
    for frame in before:
        check.feed(frame)
    with pytest.raises(ResumeError, match=error):
        check.feed(last)


def test_percentiles_are_nearest_rank_of_the_samples() -> None:
    """p50 of 1..10 is 5, p99 is 10; no samples: nulls."""
    samples = [float(n) for n in range(10, 0, -1)]
    assert nearest_rank(sorted(samples), 50) == 5.0
    assert timing_summary(samples) == {"count": 10, "p50": 5.0, "p99": 10.0, "max": 10.0}
    assert timing_summary([]) == {"count": 0, "p50": None, "p99": None, "max": None}


def test_the_cli_refuses_to_resume_nothing() -> None:
    """--missed 0, --repeats 0 or --warmup -1 is a usage error (exit 2), before connecting."""
    args = build_parser().parse_args(["resume", "--url", "ws://h:1"])
    assert (args.missed, args.repeats, args.warmup, args.consumer_url) == (1000, 20, 1, None)
    for flag, value in (("--missed", "0"), ("--repeats", "0"), ("--warmup", "-1")):
        with pytest.raises(SystemExit) as exited:
            main(["resume", "--url", "ws://127.0.0.1:9", flag, value])
        assert exited.value.code == 2


async def test_resume_gets_the_missed_messages_in_order_every_repeat(
    start_relay: StartRelay,
) -> None:
    """Against a relay: each repeat (the warm-up too) resumes 1,000 messages on a fresh
    channel, every one checked; the result has each timed one, its percentiles, the counts."""
    server = await start_relay()
    result = await run_resume(url=server.ws_url, missed=1000, repeats=2, sample_interval_s=0.1)
    assert check_result(json.loads(json.dumps(result))) == []
    assert result["scenario"] == "resume"
    assert result["params"]["warmup"] == 1
    assert len(result["extra"]["warmup_ms"]) == 1
    counts = result["summary"]["counts"]
    assert counts["delivered"] == counts["expected"] == counts["acks"] == 3000
    assert counts["connected"] == 3 * CONNECTIONS_PER_REPEAT
    assert counts["errors"] == 0
    samples = result["extra"]["samples_ms"]
    assert len(samples) == 2
    assert all(ms > 0 for ms in samples)
    assert result["extra"]["resume_ms"]["max"] == max(samples)
    assert result["summary"]["latency_ms"]["count"] == 2
    handshake, first = result["extra"]["handshake_ms"], result["extra"]["subscribed_ms"]
    assert 0 < handshake["max"] <= first["max"] <= max(samples)


async def test_resume_through_another_relay_on_the_same_redis(
    start_relay: StartRelay, redis_server: RedisServer
) -> None:
    """Published on relay A, resumed on relay B (--consumer-url): B replays from Redis, every
    message in order."""
    a = await start_relay(broker=redis_server.url)
    b = await start_relay(broker=redis_server.url)
    result = await run_resume(url=a.ws_url, consumer_url=b.ws_url, missed=1000, repeats=2)
    assert result["summary"]["counts"]["delivered"] == 3000
    assert result["params"]["consumer_url"] == b.ws_url


async def test_messages_longer_than_one_read_are_put_back_together(
    start_relay: StartRelay,
) -> None:
    """200 kB messages arrive over several reads of the lean client: each is checked whole."""
    server = await start_relay()
    result = await run_resume(
        url=server.ws_url, missed=3, repeats=1, warmup=0, payload_bytes=200_000
    )
    assert result["summary"]["counts"]["delivered"] == 3


async def test_a_relay_keeping_fewer_messages_fails_the_run(start_relay: StartRelay) -> None:
    """20 missed on a relay keeping 10: the run fails loudly with the reason."""
    server = await start_relay(history_messages=10)
    with pytest.raises(ResumeError, match=r"repeat 1 of 3 .*reason 'trimmed'.*history_messages"):
        await run_resume(url=server.ws_url, missed=20, repeats=2)


async def test_a_relay_without_history_fails_the_run(start_relay: StartRelay) -> None:
    """history_messages 0: nothing to resume from (the channel's epoch goes with its last
    consumer), and the run says so."""
    server = await start_relay(history_messages=0)
    with pytest.raises(ResumeError, match=r"was not done: reason .*history_messages 0"):
        await run_resume(url=server.ws_url, missed=5, repeats=1)
