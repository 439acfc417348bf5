"""The ``connections`` scenario: ramp to N idle WebSocket connections and measure their cost.

Reports the connect rate, per-connection connect latency (in ``summary.latency_ms``) and the
server's RSS per connection: ``(RSS after the ramp and hold - RSS before) / connected``, and
its CPU time per connection set up during the ramp. The idle connections answer the server's
pings like real ones: trio-websocket clients, or with ``client="lean"`` wsproto over a raw
stream (:class:`~loadtest.lean.LeanWebSocket`), whose handshake costs the generator a fraction
of trio-websocket's, so that the server, not the generator, limits the connect rate.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any, Final, Literal

import trio

from loadtest.clients import CONNECTION_ERRORS, Headers, Stopper, open_client
from loadtest.endpoints import Role, endpoint_url
from loadtest.engine import ProgressFn, sample_loop, start_many
from loadtest.lean import CONSUMER_ERRORS, open_counted
from loadtest.monitor import GENERATOR_BOUND_PERCENT, ProcessSampler, Sample
from loadtest.report import build_result, run_summary
from loadtest.stats import RoleStats
from loadtest.tokens import TokenIn, token_headers, token_param, token_url

logger = logging.getLogger(__name__)

Client = Literal["trio-websocket", "lean"]
CLIENTS: Final[tuple[Client, ...]] = ("trio-websocket", "lean")


async def hold_idle(
    url: str,
    stats: RoleStats,
    stopper: Stopper,
    *,
    connect_timeout_s: float,
    headers: Headers = (),
    on_connected: ProgressFn | None = None,
    client: Client = "trio-websocket",
    task_status: trio.TaskStatus[bool] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Open one connection (sending ``headers``) with ``client``, record its connect time, and
    hold it until ``stopper`` stops.

    Reports ``started(True)`` once connected, ``started(False)`` on failure (counted).
    """
    t0 = time.monotonic_ns()
    started = False
    if client == "lean":
        await _hold_lean(url, stats, stopper, connect_timeout_s, headers, on_connected, task_status)
        return
    try:
        async with open_client(url, connect_timeout_s, headers):
            stats.latency.record_ns(time.monotonic_ns() - t0)
            stats.counters.connected += 1
            started = True
            if on_connected is not None:
                on_connected(1.0)
            task_status.started(True)
            with stopper.scope():
                await trio.sleep_forever()
    except CONNECTION_ERRORS as exc:
        if not started:
            stats.counters.failed_connects += 1
            stats.note_error(f"connect: {exc!r}")
            task_status.started(False)
        elif not stopper.stopped:
            stats.note_error(f"idle connection: {exc!r}")


async def _hold_lean(
    url: str,
    stats: RoleStats,
    stopper: Stopper,
    connect_timeout_s: float,
    headers: Headers,
    on_connected: ProgressFn | None,
    task_status: trio.TaskStatus[bool],
) -> None:
    t0 = time.monotonic_ns()
    lean = await open_counted(
        url,
        connect_timeout_s=connect_timeout_s,
        headers=headers,
        stats=stats,
        what="idle",
        task_status=task_status,
    )
    if lean is None:
        return
    try:
        stats.latency.record_ns(time.monotonic_ns() - t0)
        if on_connected is not None:
            on_connected(1.0)
        with stopper.scope():
            await lean.pump()  # answers pings; returns when the server closes
        if not stopper.stopped:
            stats.note_error("idle connection: closed by the server")
    except CONSUMER_ERRORS as exc:
        if not stopper.stopped:
            stats.note_error(f"idle connection: {exc!r}")
    finally:
        await lean.aclose()


async def probe_round_trip(
    url: str,
    channel: str | None,
    *,
    rounds: int = 20,
    timeout_s: float = 10.0,
    token: str | None = None,
    token_in: TokenIn = "header",
) -> dict[str, float]:
    """A new producer's connect time and echo round trips, in ms, while others are held.

    Echo round trips work against both servers (the baseline always echoes; triorelay's
    default ``?ack=echo``). Hold the idle connections as producers to keep this a pure
    round trip (idle consumers would receive the probe messages too). The probe presents
    ``token`` like the held connections.
    """
    target = token_url(endpoint_url(url, "producer", channel), token, token_in)
    with trio.fail_after(timeout_s):
        t0 = time.perf_counter()
        async with open_client(target, timeout_s, token_headers(token, token_in)) as ws:
            connect_ms = (time.perf_counter() - t0) * 1000
            rtts: list[float] = []
            for i in range(rounds):
                sent = time.perf_counter()
                await ws.send_message(f'{{"probe": {i}}}')
                await ws.get_message()
                rtts.append((time.perf_counter() - sent) * 1000)
    rtts.sort()
    return {
        "probe_connect_ms": round(connect_ms, 3),
        "probe_rtt_ms_p50": round(rtts[len(rtts) // 2], 3),
        "probe_rtt_ms_max": round(rtts[-1], 3),
    }


def connect_limit(server_percent: float | None, generator_bound: bool) -> str | None:
    """What limited the connect rate: ``"server"`` when the server used at least
    ``GENERATOR_BOUND_PERCENT`` of a core over the ramp (however busy the generator was, the
    server could not have gone faster), else ``"generator"`` when the generator was
    saturated, else None (neither: the rate is what ``connect_concurrency`` attempts in flight
    give). One core is the whole server's: it is pinned to one, as ``compare`` runs it (a
    server with more cores at hand may be below its limit at 90 % of one)."""
    if server_percent is not None and server_percent >= GENERATOR_BOUND_PERCENT:
        return "server"
    return "generator" if generator_bound else None


async def run_connections(
    *,
    url: str,
    channel: str | None = None,
    connections: int = 1000,
    role: Role = "consumer",
    connect_concurrency: int = 64,
    connect_timeout_s: float = 10.0,
    hold_s: float = 1.0,
    server_pid: int | None = None,
    sample_interval_s: float = 0.5,
    progress: ProgressFn | None = None,
    token: str | None = None,
    token_in: TokenIn = "header",
    client: Client = "trio-websocket",
) -> dict[str, Any]:
    """Ramp to ``connections`` idle connections, hold them ``hold_s``, then close them all.

    RSS and CPU per connection need ``server_pid``; without it those fields are ``None``.
    Every connection presents ``token`` as ``token_in`` says; ``params.token_in`` records
    how. ``client`` opens and holds them (see the module docstring).
    """
    stats = RoleStats()
    stopper = Stopper()
    target = token_url(endpoint_url(url, role, channel), token, token_in)
    headers = token_headers(token, token_in)
    server = ProcessSampler(server_pid) if server_pid is not None else None
    server_samples: list[Sample] = []
    generator_samples: dict[str, list[Sample]] = {"main": []}
    before = server.sample() if server is not None else None
    done = 0

    def on_connected(_: float) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done / connections if connections else 1.0)

    stop_sampling = trio.Event()
    async with trio.open_nursery() as nursery:
        samplers = [(ProcessSampler(os.getpid()), generator_samples["main"])]
        if server is not None:
            samplers.append((server, server_samples))
        nursery.start_soon(sample_loop, samplers, sample_interval_s, stop_sampling)
        t0 = time.monotonic()
        cpu0 = server.cpu_seconds() if server is not None else None
        connected = await start_many(
            nursery,
            [
                functools.partial(
                    hold_idle,
                    target,
                    stats,
                    stopper,
                    connect_timeout_s=connect_timeout_s,
                    headers=headers,
                    on_connected=on_connected,
                    client=client,
                )
                for _ in range(connections)
            ],
            connect_concurrency,
        )
        connect_s = time.monotonic() - t0
        cpu1 = server.cpu_seconds() if server is not None else None
        await trio.sleep(hold_s)  # let the server settle before reading RSS
        after = server.sample() if server is not None else None
        probe = await probe_round_trip(url, channel, token=token, token_in=token_in)
        stopper.stop()
        stop_sampling.set()

    rss_delta = None
    per_conn = None
    cpu_ms_per_connect = None
    server_percent = None
    if cpu0 is not None and cpu1 is not None and connected:
        cpu_ms_per_connect = round((cpu1 - cpu0) * 1000 / connected, 3)
        server_percent = round((cpu1 - cpu0) * 100 / connect_s, 1) if connect_s > 0 else None
    if before is not None and after is not None:
        rss_delta = after.rss_bytes - before.rss_bytes
        per_conn = round(rss_delta / connected, 1) if connected else None
    summary = run_summary(
        stats,
        expected=0,
        duration_s=connect_s,
        server_samples=server_samples if server is not None else None,
        generator_samples=generator_samples,
    )
    limited_by = connect_limit(server_percent, summary["generator"]["generator_bound"])
    return build_result(
        scenario="connections",
        url=url,
        channel=channel,
        server_pid=server_pid,
        params={
            "connections": connections,
            "role": role,
            "client": client,
            "connect_concurrency": connect_concurrency,
            "connect_timeout_s": connect_timeout_s,
            "hold_s": hold_s,
            "sample_interval_s": sample_interval_s,
            "token_in": token_param(token, token_in),
        },
        summary=summary,
        extra={
            "connected": connected,
            "connect_seconds": round(connect_s, 3),
            "connect_rate_per_s": round(connected / connect_s, 1) if connect_s > 0 else None,
            "server_rss_before_bytes": None if before is None else before.rss_bytes,
            "server_rss_after_bytes": None if after is None else after.rss_bytes,
            "server_rss_delta_bytes": rss_delta,
            "server_rss_per_connection_bytes": per_conn,
            "server_cpu_ms_per_connect": cpu_ms_per_connect,
            "server_cpu_percent_connecting": server_percent,
            "limited_by": limited_by,
            **probe,
        },
    )
