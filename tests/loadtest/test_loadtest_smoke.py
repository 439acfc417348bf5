"""Seconds-long smoke runs of every scenario against a real baseline server on port 0.

The scenario functions take any base URL, so the same tests can later point at triorelay.
The baseline has competing-consumer semantics, hence ``delivery="competing"`` where it matters.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from conftest import RunningServer

from loadtest import scenarios
from loadtest.cli import main
from loadtest.connections import Client, connect_limit, run_connections
from loadtest.endpoints import host_port
from loadtest.lean import LEAN_CONNECT_ERRORS, LeanWebSocket, open_tcp
from loadtest.report import check_result

pytestmark = pytest.mark.timeout(45)


def _common(server: RunningServer, **kwargs: Any) -> scenarios.Common:
    settings: dict[str, Any] = {"duration_s": 1.0, "drain_s": 1.0, "sample_interval_s": 0.25}
    return scenarios.Common(url=server.url, server_pid=server.pid, **{**settings, **kwargs})


def _assert_delivered(result: dict[str, Any], scenario: str) -> None:
    assert check_result(json.loads(json.dumps(result))) == []
    assert result["scenario"] == scenario
    counts = result["summary"]["counts"]
    assert counts["sent"] > 0
    assert counts["delivered"] > 0
    assert counts["errors"] == 0, result["summary"]["errors"]
    assert result["summary"]["latency_ms"]["p99"] is not None
    assert result["summary"]["server"]["rss_bytes"]["max"] > 0


async def test_pair(baseline_server: RunningServer) -> None:
    """2 producers -> 2 consumers: every message is echoed and delivered once."""
    result = await scenarios.run_pair(
        _common(baseline_server), producers=2, consumers=2, rate_per_s=200, delivery="competing"
    )
    _assert_delivered(result, "pair")
    counts = result["summary"]["counts"]
    assert counts["acks"] == counts["sent"] == counts["offered"] == 200
    assert counts["delivered"] == counts["expected"] == 200


async def test_pair_lean_producers_in_a_worker_process(baseline_server: RunningServer) -> None:
    """The lean wsproto sender in a worker process delivers across process boundaries."""
    result = await scenarios.run_pair(
        _common(baseline_server, sender="batched", producer_procs=1),
        producers=2,
        consumers=1,
        rate_per_s=300,
    )
    _assert_delivered(result, "pair")
    assert result["summary"]["counts"]["delivered"] == 300
    assert result["summary"]["generator"]["processes"] == 2


@pytest.mark.parametrize("producers", [1, 100])
async def test_pair_unbatched_producers_in_a_worker_process(
    baseline_server: RunningServer, producers: int
) -> None:
    """The unbatched sender (the default), one producer or 100 sharing the rate, in a worker
    process: every message sent on its own, acked and delivered."""
    result = await scenarios.run_pair(
        _common(baseline_server, producer_procs=1),
        producers=producers,
        consumers=1,
        rate_per_s=300,
    )
    _assert_delivered(result, "pair")
    counts = result["summary"]["counts"]
    assert result["params"]["sender"] == "unbatched"
    assert counts["sent"] == counts["acks"] == counts["delivered"] == 300
    assert counts["connected"] == producers + 1


async def test_pair_on_the_trio_websocket_clients(baseline_server: RunningServer) -> None:
    """The library clients, producer and consumer, still deliver every message."""
    common = _common(baseline_server, sender="trio-websocket", consumer_client="trio-websocket")
    result = await scenarios.run_pair(common, rate_per_s=100)
    _assert_delivered(result, "pair")
    assert result["summary"]["counts"]["delivered"] == 100
    assert result["params"]["consumer_client"] == "trio-websocket"


async def test_fanout(baseline_server: RunningServer) -> None:
    """1 producer -> 5 consumers: the baseline delivers each message once, not 5 times."""
    result = await scenarios.run_fanout(_common(baseline_server), consumers=5, rate_per_s=50)
    _assert_delivered(result, "fanout")
    counts = result["summary"]["counts"]
    assert counts["expected"] == 5 * counts["sent"]
    assert counts["delivered"] == counts["sent"]  # competing semantics: no fan-out
    assert result["extra"]["per_consumer_delivered"]["consumers"] == 5
    assert result["extra"]["deliveries_per_s"] > 0


async def test_fanout_on_the_broadcast_loop(broadcast_server: RunningServer) -> None:
    """1 producer -> 5 consumers on the broadcast baseline: every consumer gets every
    message, and the producer gets each one back."""
    result = await scenarios.run_fanout(
        _common(broadcast_server, producer_procs=1), consumers=5, rate_per_s=100
    )
    _assert_delivered(result, "fanout")
    counts = result["summary"]["counts"]
    assert counts["sent"] == counts["acks"] == 100
    assert counts["delivered"] == counts["expected"] == 5 * 100
    # The server's CPU once every consumer was connected, read by the generator (the
    # per-delivery figure compare shows beside the whole run's).
    connected_cpu_s = result["extra"]["server_cpu_seconds_connected"]
    assert isinstance(connected_cpu_s, float)
    assert connected_cpu_s >= 0
    assert result["extra"]["per_consumer_delivered"] == {
        "consumers": 5, "min": 100, "max": 100, "mean": 100.0,
    }  # fmt: skip


async def test_queue(baseline_server: RunningServer) -> None:
    """Competing consumers: the ledger finds no duplicates and nothing missing."""
    result = await scenarios.run_queue(
        _common(baseline_server), producers=2, consumers=3, rate_per_s=200
    )
    _assert_delivered(result, "queue")
    counts = result["summary"]["counts"]
    assert counts["duplicates"] == 0
    assert counts["missing"] == 0


async def test_slow(baseline_server: RunningServer) -> None:
    """A stalled consumer next to normal ones: normal consumers still get messages."""
    result = await scenarios.run_slow(
        _common(baseline_server, payload_bytes=1024),
        consumers=2,
        stalled=1,
        rate_per_s=200,
        delivery="competing",
    )
    _assert_delivered(result, "slow")
    assert result["params"]["stalled"] == 1
    assert result["summary"]["counts"]["connected"] == 4
    assert len(result["summary"]["server"]["series"]) >= 2


async def test_max(baseline_server: RunningServer) -> None:
    """Two low steps: both sustained on an idle machine, the best is reported."""
    result = await scenarios.run_max(
        _common(baseline_server, duration_s=0.5),
        max_rate_per_s=400,
        steps=[200],
        p99_bound_ms=1000.0,
        min_delivered_ratio=0.9,
    )
    _assert_delivered(result, "max")
    steps = result["extra"]["steps"]
    assert [s["rate_per_s"] for s in steps] == [200, 400]
    assert result["extra"]["max_sustained_per_s"] == 400
    assert "series" not in steps[0]["summary"]["server"]


@pytest.mark.parametrize("client", ["trio-websocket", "lean"])
async def test_connections(baseline_server: RunningServer, client: Client) -> None:
    """Ramp to 30 idle connections with either client; report RSS and CPU per connection,
    connect rate, a probe's RTT."""
    result = await run_connections(
        url=baseline_server.url,
        connections=30,
        role="producer",
        hold_s=0.1,
        server_pid=baseline_server.pid,
        client=client,
    )
    assert check_result(json.loads(json.dumps(result))) == []
    extra = result["extra"]
    assert result["params"]["client"] == client
    assert extra["connected"] == 30
    assert result["summary"]["counts"]["errors"] == 0
    assert extra["server_cpu_ms_per_connect"] > 0
    assert extra["server_cpu_percent_connecting"] > 0
    assert extra["limited_by"] == connect_limit(
        extra["server_cpu_percent_connecting"], result["summary"]["generator"]["generator_bound"]
    )
    assert extra["connect_rate_per_s"] > 0
    assert extra["server_rss_per_connection_bytes"] is not None
    assert result["summary"]["latency_ms"]["count"] == 30
    assert 0 < extra["probe_rtt_ms_p50"] <= extra["probe_rtt_ms_max"]
    assert extra["probe_connect_ms"] > 0


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_the_lean_client_connects_by_address_or_by_name(
    baseline_server: RunningServer, host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An IP address is dialled directly (trio's resolving dial is not used for it), a name
    through trio's; either way the handshake completes and a message goes through (the
    baseline echoes it)."""
    port = host_port(baseline_server.url)[1]
    resolving = trio.open_tcp_stream

    async def only_names(name: str, port: int) -> trio.SocketStream:
        assert name == "localhost", "an IP address went through trio's resolving dial"
        return await resolving(name, port)

    monkeypatch.setattr(trio, "open_tcp_stream", only_names)
    lean = await LeanWebSocket.open(f"ws://{host}:{port}/ws/producer")
    try:
        await lean.send_texts(['{"probe": 1}'])
        assert len(await lean.receive_messages()) == 1
    finally:
        await lean.aclose()


async def test_the_lean_client_reports_a_refused_connection() -> None:
    """A port bound and not listening: the direct dial raises ConnectionRefusedError (as
    trio's own dial does), one of LEAN_CONNECT_ERRORS."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))  # held, so nothing else listens there meanwhile
        with pytest.raises(ConnectionRefusedError):
            await open_tcp("127.0.0.1", bound.getsockname()[1])
    assert issubclass(ConnectionRefusedError, LEAN_CONNECT_ERRORS)


def test_what_limited_a_ramp() -> None:
    """The server saturated over the ramp is the limit, however busy the generator was; else
    a saturated generator; else neither (the attempts in flight were)."""
    assert connect_limit(95.0, generator_bound=True) == "server"
    assert connect_limit(90.0, generator_bound=True) == "server"  # the bound itself counts
    assert connect_limit(89.9, generator_bound=True) == "generator"
    assert connect_limit(50.0, generator_bound=False) is None
    assert connect_limit(None, generator_bound=True) == "generator"
    assert connect_limit(None, generator_bound=False) is None


def test_cli_writes_json(baseline_server: RunningServer, tmp_path: Path) -> None:
    """python -m loadtest pair ... --json-out writes a well-formed result."""
    out = tmp_path / "pair.json"
    code = main(
        [
            "pair",
            "--url", baseline_server.url,
            "--duration-seconds", "0.5",
            "--drain-seconds", "1",
            "--rate", "100",
            "--server-pid", str(baseline_server.pid),
            "--no-progress",
            "--json-out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert check_result(result) == []
    assert result["summary"]["counts"]["delivered"] == 50


async def test_leftovers_of_earlier_runs_are_ignored(baseline_server: RunningServer) -> None:
    """Messages a previous run left in the baseline's queue count as foreign, not delivered."""
    common = _common(baseline_server, duration_s=0.5)
    first = await scenarios.run_pair(common, producers=1, consumers=0, rate_per_s=100)
    assert first["summary"]["counts"]["acks"] == 50
    second = await scenarios.run_pair(common, producers=1, consumers=1, rate_per_s=100)
    counts = second["summary"]["counts"]
    assert counts["foreign"] == 50
    assert counts["delivered"] == counts["sent"] == 50


async def test_sampling_ends_with_the_last_delivery_not_the_consumers_leaving(
    broadcast_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Consumers that take 2 s to leave: no sample covers it (1,000 consumers closing took
    the generator's process 98 % of its core in the last sample, flagging a run below 30 %
    as generator-bound), and the run is not flagged."""
    import loadtest.lean as lean

    real_leave = lean.leave

    async def slow_leave(*args: Any) -> None:
        await trio.sleep(2.0)  # a slow tear-down, after the last delivery
        await real_leave(*args)

    monkeypatch.setattr(lean, "leave", slow_leave)
    common = _common(broadcast_server, producer_procs=1, sample_interval_s=0.1)
    result = await scenarios.run_fanout(common, consumers=3, rate_per_s=50)
    _assert_delivered(result, "fanout")
    assert result["summary"]["flags"] == []
    for series in (
        result["summary"]["generator"]["series"]["main"],
        result["summary"]["server"]["series"],
    ):
        span_s = series[-1][0] - series[0][0]
        assert span_s < common.duration_s + 1.0, span_s  # 1 s send window; 2 s to leave


async def test_a_last_sample_right_after_the_one_before_gives_no_cpu_figure() -> None:
    """Sampling stopped a moment after a sample: the last one keeps its RSS but no CPU
    percent (psutil's CPU times move in 10 ms steps: over a few ms it could read 100 %)."""
    import os

    from loadtest.engine import sample_loop
    from loadtest.monitor import ProcessSampler, Sample

    out: list[Sample] = []
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample_loop, [(ProcessSampler(os.getpid()), out)], 10.0, stop)
        await trio.testing.wait_all_tasks_blocked()
        stop.set()
    assert len(out) == 2
    assert out[0].cpu_percent is None  # the first has nothing before it
    assert out[1].cpu_percent is None
    assert out[1].rss_bytes > 0


async def test_with_stalled_consumers_the_series_runs_past_the_last_delivery(
    broadcast_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The slow scenario watches the server's memory while a stalled consumer stays: its
    sampling does not stop at the normal consumers' last delivery, unlike a fan-out's."""
    import loadtest.lean as lean

    real_leave = lean.leave

    async def slow_leave(*args: Any) -> None:
        await trio.sleep(1.5)  # after the last delivery, before the run's end
        await real_leave(*args)

    monkeypatch.setattr(lean, "leave", slow_leave)
    common = _common(broadcast_server, producer_procs=1, sample_interval_s=0.1)
    result = await scenarios.run_slow(common, consumers=1, stalled=1, rate_per_s=50)
    _assert_delivered(result, "slow")
    series = result["summary"]["server"]["series"]
    assert series[-1][0] - series[0][0] > common.duration_s + 1.0  # sampled while leaving
