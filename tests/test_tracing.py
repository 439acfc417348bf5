"""Latency by stage: traced messages, their stage times, histograms and trace notices."""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import StartRelay
from tests.helpers import RunningRelay
from tests.redis_server import RedisServer
from triorelay import framing
from triorelay.tracing import BUCKETS, StageHistograms, Trace, trace_id_of

pytestmark = pytest.mark.timeout(30)


# -- pure parts --


def test_traceparent_gives_its_trace_id_and_a_malformed_one_nothing() -> None:
    """W3C traceparent: version 00, 32 hex trace id (not all zeros), 16 hex parent, flags."""
    good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert trace_id_of(good) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace_id_of(good.upper()) == "4bf92f3577b34da6a3ce929d0e0e4736"
    for bad in (None, "", "01-" + good[3:], "00-" + "0" * 32 + good[35:], good + "-extra"):
        assert trace_id_of(bad) is None


def test_a_trace_travels_through_redis_as_text() -> None:
    """What an entry carries (trace id and read time) comes back, with Redis's time."""
    trace = Trace(123, "ab" * 16)
    assert Trace.decode(trace.encode(), 456) == Trace(123, "ab" * 16, 456)
    assert Trace.decode(Trace(7).encode(), 8) == Trace(7, None, 8)
    with pytest.raises(ValueError, match="not enough values"):
        Trace.decode(b"garbage", 1)


def test_histogram_quantiles_interpolate_within_buckets() -> None:
    """p50 / p99 as Prometheus's histogram_quantile estimates them; none without data."""
    histograms = StageHistograms()
    assert histograms.quantile(0, 0.5) is None
    for _ in range(99):
        histograms.observe((0.0003, 0.0, 0.0, 0.0))  # the 0.00025..0.0005 bucket
    histograms.observe((20.0, 0.0, 0.0, 0.0))  # past the last bound: +Inf
    p50 = histograms.quantile(0, 0.5)
    assert p50 is not None
    assert 0.00025 < p50 <= 0.0005
    assert histograms.quantile(0, 1.0) == BUCKETS[-1]
    assert histograms.count(0) == 100
    assert histograms.summary()["accept"]["count"] == 100
    histograms.observe((-1.0, 0.0, 0.0, 0.0))  # two clocks disagreeing: counted as 0
    assert histograms.counts[0][0] == 1


def test_histograms_add_up_and_an_interval_is_the_difference() -> None:
    """total() adds namespaces' histograms; since() leaves what an interval observed alone."""
    first, second = StageHistograms(), StageHistograms()
    first.observe((0.001, 0.0, 0.0, 0.0))
    second.observe((0.001, 0.002, 0.0, 0.0))
    before = StageHistograms.total([first, second])
    assert before.count(0) == 2
    assert before.sums[1] == pytest.approx(0.002)
    second.observe((4.0, 0.0, 0.0, 0.0))
    window = StageHistograms.total([first, second]).since(before)
    assert [window.count(stage) for stage in range(4)] == [1, 1, 1, 1]
    p99 = window.quantile(0, 0.99)
    assert p99 is not None
    assert 2.5 < p99 <= 5.0
    assert StageHistograms.total([]).since(StageHistograms()).quantile(0, 0.99) is None


# -- a real relay --


async def traced_round_trips(
    server: RunningRelay, count: int, *, framed: bool = False
) -> list[tuple[int, int, dict[str, Any]]]:
    """Send ``count`` messages from a producer with ``?trace=true`` to a consumer with
    ``?trace=true``; return, per message, the client's send and receive times (ns) and the
    trace notice that followed it."""
    results = []
    protocols = [framing.SUBPROTOCOL] if framed else []
    async with (
        server.websocket("/ws/consumer/traced.a?trace=true", subprotocols=protocols) as consumer,
        server.websocket("/ws/producer/traced.a?trace=true&ack=none") as producer,
    ):
        if framed:
            await consumer.get_message()  # subscribed
        for i in range(count):
            sent = time.time_ns()
            await producer.send_message(f"m{i}")
            message = await consumer.get_message()
            received = time.time_ns()
            expected = f"m traced.a {i + 1}\nm{i}" if framed else f"m{i}"
            assert message == expected
            notice = json.loads(await consumer.get_message())
            assert notice["triorelay"] == "trace"
            results.append((sent, received, notice))
    return results


#: What the network and the in-process client may take of a traced round trip (median).
LEFT_OUT_NS = 5_000_000


def check_stages(sent: int, received: int, notice: dict[str, Any]) -> int:
    """The stage times are ordered, lie within the client's own measurement, and add up;
    return how much of the client's end-to-end time they leave out (ns)."""
    times = [
        notice[f"{stage}_ns"] for stage in ("read", "accepted", "delivered", "taken", "written")
    ]
    assert times == sorted(times), notice
    assert sent <= times[0]
    assert times[-1] <= received
    stages = notice["stages_seconds"]
    assert set(stages) == {"accept", "broker", "queue", "write"}
    total = sum(stages.values())
    assert abs(total - (times[-1] - times[0]) / 1e9) < 1e-6
    return (received - sent) - (times[-1] - times[0])


async def test_stage_times_are_ordered_and_add_up_to_the_end_to_end_time(
    start_relay: StartRelay,
) -> None:
    """Memory broker: for each traced message the stages are ordered, and their sum is the
    client's own end-to-end time less what the network and the client took (the median of
    20 under 5 ms: client and relay share this process's trio loop, and under the whole
    suite's load with coverage that share alone passed 1 ms)."""
    server = await start_relay()
    results = await traced_round_trips(server, 20)
    left_out = [check_stages(*result) for result in results]
    assert statistics.median(left_out) < LEFT_OUT_NS, left_out
    notice = results[0][2]
    assert notice["channel"] == "traced.a"
    assert notice["offset"] == 1
    assert len(notice["trace_id"]) == 32


async def test_positioned_consumers_get_trace_notices_as_control_messages(
    start_relay: StartRelay,
) -> None:
    """With the framing, the trace notice is a control message after the message frame."""
    server = await start_relay()
    results = await traced_round_trips(server, 3, framed=True)
    for result in results:
        check_stages(*result)


async def test_through_redis_the_broker_stage_is_the_round_trip(
    start_relay: StartRelay, redis_server: RedisServer
) -> None:
    """Redis: accepted is Redis's own time of storing it, delivered when the reader read
    it; the broker stage is there (more than nothing) and the stages still add up."""
    server = await start_relay(broker=redis_server.url)
    results = await traced_round_trips(server, 10)
    left_out = [check_stages(*result) for result in results]
    assert statistics.median(left_out) < LEFT_OUT_NS, left_out
    assert all(notice["stages_seconds"]["broker"] > 0 for _, _, notice in results)


async def test_an_http_publish_with_traceparent_is_traced_under_its_trace_id(
    start_relay: StartRelay, caplog: pytest.LogCaptureFixture
) -> None:
    """A W3C traceparent on an HTTP publish: consumers that ask get a notice with that trace
    id, and the trace is logged (triorelay.trace)."""
    server = await start_relay()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    caplog.set_level("INFO", logger="triorelay.trace")
    async with server.websocket("/ws/consumer/web?trace=true") as consumer:
        response = await server.http.post(
            "/channels/web/messages",
            content="hello",
            headers={
                "content-type": "text/plain",
                "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01",
            },
        )
        assert response.status_code == 202
        assert await consumer.get_message() == "hello"
        notice = json.loads(await consumer.get_message())
    assert notice["trace_id"] == trace_id
    assert any(trace_id in record.getMessage() for record in caplog.records)


async def test_a_consumer_that_did_not_ask_gets_no_notice(start_relay: StartRelay) -> None:
    """Tracing never adds anything to the stream of a consumer that did not ask."""
    server = await start_relay()
    async with (
        server.websocket("/ws/consumer/quiet") as consumer,
        server.websocket("/ws/producer/quiet?trace=true&ack=id") as producer,
    ):
        for text in ("one", "two"):
            await producer.send_message(text)
            await producer.get_message()  # accepted
        async with server.websocket("/ws/producer/quiet?ack=id") as untraced:
            await untraced.send_message("end")
            await untraced.get_message()  # after the two: the channel's order
        # A notice would have come between them.
        assert [await consumer.get_message() for _ in range(3)] == ["one", "two", "end"]


async def test_one_message_in_n_is_sampled_into_the_histograms(start_relay: StartRelay) -> None:
    """``latency_sample_messages = 10``: 50 messages, 5 traced; each stage histogram of the
    namespace counts 5 in /metrics, and the channel statistics give p50 / p99 per stage."""
    server = await start_relay(latency_sample_messages=10)
    async with (
        server.websocket("/ws/consumer/sampled.x") as consumer,
        server.websocket("/ws/producer/sampled.x?ack=none") as producer,
    ):
        for i in range(50):
            await producer.send_message(f"m{i}")
        for _ in range(50):
            await consumer.get_message()
        statistics_ = await server.channel("sampled.x")
        text = (await server.http.get("/metrics")).text
    counts = {
        sample.labels["stage"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "triorelay_stage_latency_seconds_count"
        and sample.labels["namespace"] == "sampled"
    }
    assert counts == {"accept": 5, "broker": 5, "queue": 5, "write": 5}
    latency = statistics_["latency"]
    assert latency["write"]["count"] == 5
    assert latency["write"]["p50"] is not None
    assert latency["write"]["p99"] >= latency["write"]["p50"]
