"""``python -m loadtest``: the command line of the load generator.

Every scenario takes ``--url``, ``--channel``, ``--duration-seconds``, ``--payload-bytes`` and
``--json-out``; see ``python -m loadtest SCENARIO --help``. A one-line summary goes to stdout,
the full result (see :mod:`loadtest.report`) to ``--json-out`` (``-`` for stdout).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import trio

from loadtest import connections, idle, resume, roundtrip, scenarios
from loadtest.compare import runner as compare
from loadtest.engine import CONSUMER_CLIENTS, SENDERS
from loadtest.limits import pace_full_collections, raise_fd_limit
from loadtest.report import acked_line, one_line
from loadtest.schedule import DEFAULT_MIN_DELIVERED_RATIO, DEFAULT_P99_BOUND_MS, DEFAULT_RATE_STEPS
from loadtest.tokens import QUERY_PARAMETER, TOKEN_IN, redact_in_logs

logger = logging.getLogger(__name__)


def _common_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("target and run")
    g.add_argument("--url", required=True, help="server base URL, e.g. ws://127.0.0.1:8000")
    g.add_argument("--channel", default=None, help="channel (default: the plain endpoints)")
    g.add_argument("--duration-seconds", type=float, default=10.0, help="send window (per step)")
    g.add_argument("--payload-bytes", type=int, default=128, help="frame size, min 74")
    g.add_argument("--json-out", default=None, help="write the result JSON here ('-': stdout)")
    g.add_argument("--server-pid", type=int, default=None, help="sample this PID's CPU and RSS")
    g.add_argument("--sample-interval-seconds", type=float, default=0.5)
    g.add_argument("--connect-timeout-seconds", type=float, default=10.0)
    g.add_argument("--connect-concurrency", type=int, default=64)
    g.add_argument(
        "--token",
        default=None,
        help="send this token on every WebSocket handshake (never printed or logged; the "
        "result records only --token-in)",
    )
    g.add_argument(
        "--token-in",
        choices=TOKEN_IN,
        default=TOKEN_IN[0],
        help=f"how: an Authorization: Bearer header, or ?{QUERY_PARAMETER}= on the URL",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("-v", "--verbose", action="count", default=0)
    return p


def _traffic_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("traffic")
    g.add_argument(
        "--consumer-url",
        default=None,
        help="connect consumers to this server instead of --url (another relay process "
        "sharing channels through Redis: producers on one, consumers on the other)",
    )
    g.add_argument("--drain-seconds", type=float, default=2.0, help="wait for stragglers")
    g.add_argument(
        "--ack",
        choices=["echo", "id", "none", "explicit"],
        default=None,
        help="triorelay producer ack mode (omitted: server default; baseline echoes); "
        "queue also takes explicit: an acked queue (consumers ack each job, producers "
        "?ack=id) measured against plain queue mode, side by side",
    )
    g.add_argument(
        "--producer-procs",
        type=int,
        default=0,
        help="run producers in this many worker processes (0: in this process)",
    )
    g.add_argument(
        "--consumer-procs",
        type=int,
        default=0,
        help="run consumers in this many worker processes (0: in this process)",
    )
    g.add_argument(
        "--sender",
        choices=SENDERS,
        default=SENDERS[0],
        help="how producers write: unbatched (the default: one message per write, each at its "
        "own time, as most real producers do), batched (the lean sender: every message due "
        "in a 1 ms tick in one write), trio-websocket (one send_message per message on the "
        "library)",
    )
    g.add_argument(
        "--consumer-client",
        choices=CONSUMER_CLIENTS,
        default=CONSUMER_CLIENTS[0],
        help="what consumers read with: lean (the default: wsproto, one task per connection), "
        "polled (the same handshake, then one reader for every consumer of a process, "
        "parsing frames itself: the cheapest per message, for fan-outs) or trio-websocket",
    )
    g.add_argument(
        "--lean",
        action="store_const",
        dest="sender",
        const="batched",
        help="the same as --sender batched (kept for older command lines)",
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``python -m loadtest``."""
    parser = argparse.ArgumentParser(
        prog="python -m loadtest",
        description="Open-loop WebSocket load generator for triorelay and the asyncio baseline.",
    )
    sub = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    common, traffic = _common_parser(), _traffic_parser()
    delivery_help = (
        "expected delivery: broadcast (every consumer gets every message) or competing "
        "(one consumer per message; the baseline)"
    )

    p = sub.add_parser("pair", parents=[common, traffic], help="P producers -> C consumers")
    p.add_argument("--producers", type=int, default=1)
    p.add_argument("--consumers", type=int, default=1)
    p.add_argument("--rate", type=float, default=1000.0, help="total offered msg/s")
    p.add_argument(
        "--delivery", choices=["broadcast", "competing"], default="broadcast", help=delivery_help
    )

    p = sub.add_parser("fanout", parents=[common, traffic], help="1 producer -> N consumers")
    p.add_argument("--consumers", type=int, default=100)
    p.add_argument("--rate", type=float, default=10.0, help="offered msg/s (before fan-out)")

    p = sub.add_parser("queue", parents=[common, traffic], help="competing consumers")
    p.add_argument("--producers", type=int, default=1)
    p.add_argument("--consumers", type=int, default=4)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument(
        "--acked-channel",
        default=None,
        help=f"with --ack explicit: the acked queue channel (default "
        f"{scenarios.ACKED_QUEUE_CHANNEL}; --channel, default "
        f"{scenarios.PLAIN_QUEUE_CHANNEL}, is the plain queue one)",
    )

    p = sub.add_parser("max", parents=[common, traffic], help="step the rate up to the limit")
    p.add_argument("--producers", type=int, default=1)
    p.add_argument("--consumers", type=int, default=1)
    p.add_argument("--max-rate", type=float, default=50_000.0)
    p.add_argument(
        "--steps",
        default=",".join(str(s) for s in DEFAULT_RATE_STEPS),
        help="comma-separated msg/s ladder (capped at --max-rate)",
    )
    p.add_argument("--p99-bound-ms", type=float, default=DEFAULT_P99_BOUND_MS)
    p.add_argument("--min-delivered-ratio", type=float, default=DEFAULT_MIN_DELIVERED_RATIO)
    p.add_argument("--keep-going", action="store_true", help="run every step")
    p.add_argument(
        "--delivery", choices=["broadcast", "competing"], default="broadcast", help=delivery_help
    )

    p = sub.add_parser("slow", parents=[common, traffic], help="stalled consumers")
    p.add_argument("--producers", type=int, default=1)
    p.add_argument("--consumers", type=int, default=2)
    p.add_argument("--stalled", type=int, default=1)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument(
        "--delivery", choices=["broadcast", "competing"], default="broadcast", help=delivery_help
    )

    p = sub.add_parser("connections", parents=[common], help="ramp to N idle connections")
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--role", choices=["consumer", "producer"], default="consumer")
    p.add_argument("--hold-seconds", type=float, default=1.0)
    p.add_argument(
        "--client",
        choices=connections.CLIENTS,
        default=connections.CLIENTS[0],
        help="what holds the connections: trio-websocket, or lean (wsproto over a raw stream: "
        "a cheaper handshake, so the server rather than the generator limits the connect rate)",
    )

    p = sub.add_parser(
        "idle",
        help="hold N idle consumers, one per channel, until killed (compare's idle channels)",
        description=(idle.__doc__ or "").split("\n\n")[0],
    )
    p.add_argument("--url", required=True, help="server base URL, e.g. ws://127.0.0.1:8000")
    p.add_argument("--channels", type=int, default=1000, help="idle consumers, one per channel")
    p.add_argument("--prefix", default=idle.PREFIX, help="channel names: PREFIX0, PREFIX1, ...")
    p.add_argument("--connect-concurrency", type=int, default=64)
    p.add_argument("-v", "--verbose", action="count", default=0)

    p = sub.add_parser(
        "resume",
        parents=[common],
        help="time a consumer resuming N missed messages (triorelay.v1 framing, ?since=)",
        description=(resume.__doc__ or "").split("\n\n")[0],
    )
    p.add_argument("--missed", type=int, default=1000, help="messages missed per resume")
    p.add_argument(
        "--repeats",
        type=int,
        default=20,
        help="resumes timed, each on a new channel (--channel, default loadtest.resume, "
        "then .RUN.N)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="repeats done and checked first but not timed (a fresh relay's one-time costs)",
    )
    p.add_argument(
        "--consumer-url",
        default=None,
        help="connect consumers to this relay instead of --url (another relay on the same "
        "Redis: publish on one, resume on the other)",
    )

    p = sub.add_parser(
        "roundtrip",
        parents=[common],
        help="one message in flight: producer -> consumer latency of a quiet channel",
        description=(roundtrip.__doc__ or "").split("\n\n")[0],
    )
    p.add_argument("--rounds", type=int, default=5000, help="messages timed, one at a time")
    p.add_argument("--warmup", type=int, default=200, help="rounds done and checked first, untimed")

    p = sub.add_parser(
        "compare",
        help="triorelay vs the asyncio baseline: fresh pinned servers, medians, ratios, charts",
        description=(compare.__doc__ or "").split("\n\n")[0],
    )
    compare.add_arguments(p)
    return parser


def _progress_bar(enabled: bool, desc: str) -> tuple[AbstractContextManager[Any], Any]:
    if not enabled:
        return nullcontext(), None
    from tqdm import tqdm  # type: ignore[import-untyped]

    bar = tqdm(total=1000, desc=desc, unit="‰", file=sys.stderr, leave=False)
    return bar, bar


def _make_progress(bar: Any) -> Callable[[float], None] | None:
    if bar is None:
        return None

    def update(fraction: float) -> None:
        bar.n = int(fraction * 1000)
        bar.refresh()

    return update


async def run_scenario(
    args: argparse.Namespace, progress: Callable[[float], None] | None
) -> dict[str, Any]:
    """Run the scenario named in ``args`` and return its result object."""
    if args.scenario == "resume":
        return await resume.run_resume(
            url=args.url,
            consumer_url=args.consumer_url,
            channel=args.channel,
            missed=args.missed,
            repeats=args.repeats,
            warmup=args.warmup,
            payload_bytes=args.payload_bytes,
            server_pid=args.server_pid,
            sample_interval_s=args.sample_interval_seconds,
            connect_timeout_s=args.connect_timeout_seconds,
            progress=progress,
            token=args.token,
            token_in=args.token_in,
        )
    if args.scenario == "roundtrip":
        return await roundtrip.run_roundtrip(
            url=args.url,
            channel=args.channel,
            rounds=args.rounds,
            warmup=args.warmup,
            payload_bytes=args.payload_bytes,
            server_pid=args.server_pid,
            sample_interval_s=args.sample_interval_seconds,
            connect_timeout_s=args.connect_timeout_seconds,
            progress=progress,
            token=args.token,
            token_in=args.token_in,
        )
    if args.scenario == "connections":
        return await connections.run_connections(
            url=args.url,
            channel=args.channel,
            connections=args.connections,
            role=args.role,
            connect_concurrency=args.connect_concurrency,
            connect_timeout_s=args.connect_timeout_seconds,
            hold_s=args.hold_seconds,
            server_pid=args.server_pid,
            sample_interval_s=args.sample_interval_seconds,
            progress=progress,
            token=args.token,
            token_in=args.token_in,
            client=args.client,
        )
    common = scenarios.Common(
        url=args.url,
        consumer_url=args.consumer_url,
        channel=args.channel,
        duration_s=args.duration_seconds,
        payload_bytes=args.payload_bytes,
        drain_s=args.drain_seconds,
        ack=None if args.ack == "explicit" else args.ack,
        server_pid=args.server_pid,
        producer_procs=args.producer_procs,
        consumer_procs=args.consumer_procs,
        sender=args.sender,
        consumer_client=args.consumer_client,
        connect_timeout_s=args.connect_timeout_seconds,
        connect_concurrency=args.connect_concurrency,
        sample_interval_s=args.sample_interval_seconds,
        progress=progress,
        token=args.token,
        token_in=args.token_in,
    )
    if args.scenario == "fanout":
        return await scenarios.run_fanout(common, consumers=args.consumers, rate_per_s=args.rate)
    p, c = args.producers, args.consumers
    if args.scenario == "queue":
        return await scenarios.run_queue(
            common,
            producers=p,
            consumers=c,
            rate_per_s=args.rate,
            ack="explicit" if args.ack == "explicit" else "auto",
            acked_channel=args.acked_channel,
        )
    if args.scenario == "pair":
        return await scenarios.run_pair(
            common, producers=p, consumers=c, rate_per_s=args.rate, delivery=args.delivery
        )
    if args.scenario == "slow":
        return await scenarios.run_slow(
            common,
            producers=p,
            consumers=c,
            stalled=args.stalled,
            rate_per_s=args.rate,
            delivery=args.delivery,
        )
    if args.scenario == "max":
        return await scenarios.run_max(
            common,
            producers=p,
            consumers=c,
            max_rate_per_s=args.max_rate,
            steps=[int(s) for s in args.steps.split(",") if s.strip()],
            p99_bound_ms=args.p99_bound_ms,
            min_delivered_ratio=args.min_delivered_ratio,
            delivery=args.delivery,
            keep_going=args.keep_going,
        )
    raise AssertionError(f"unknown scenario {args.scenario!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one scenario; return 0 on success, 2 on bad arguments, 1 if the run failed."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pace_full_collections()
    if args.scenario == "compare":
        return compare.main(args)
    if args.scenario == "idle":
        raise_fd_limit(2 * args.channels + 1024)
        try:
            trio.run(
                functools.partial(
                    idle.run_idle,
                    args.url,
                    args.channels,
                    prefix=args.prefix,
                    connect_concurrency=args.connect_concurrency,
                )
            )
        except KeyboardInterrupt:
            return 130
        return 0
    redact_in_logs(args.token)
    if args.payload_bytes < 0 or args.duration_seconds <= 0:
        parser.error("--payload-bytes must be >= 0 and --duration-seconds > 0")
    if args.scenario == "resume" and (args.missed < 1 or args.repeats < 1 or args.warmup < 0):
        parser.error("--missed and --repeats must be at least 1, --warmup at least 0")
    if args.scenario == "roundtrip" and (args.rounds < 1 or args.warmup < 0):
        parser.error("--rounds must be at least 1, --warmup at least 0")
    explicit = getattr(args, "ack", None) == "explicit"
    if explicit and args.scenario != "queue":
        parser.error("--ack explicit is for the queue scenario")
    if explicit and args.consumer_client != "lean":
        parser.error("--ack explicit reads with the lean client (both sides, for a fair ratio)")
    wanted_fds = 4 * getattr(args, "connections", 0) + 8 * getattr(args, "consumers", 0) + 1024
    raise_fd_limit(wanted_fds)
    show = not args.no_progress and sys.stderr.isatty()
    bar_cm, bar = _progress_bar(show, args.scenario)
    try:
        with bar_cm:
            result = trio.run(run_scenario, args, _make_progress(bar))
    except KeyboardInterrupt:
        return 130
    except Exception:
        logger.exception("the %s run failed", args.scenario)
        return 1
    print(one_line(result))
    if "acked_vs_plain" in result["extra"]:
        print(acked_line(result))
    if args.scenario == "max":
        print(
            f"max sustained: {result['extra']['max_sustained_per_s']} msg/s "
            f"(limited by {result['extra']['limited_by']})"
        )
    if args.scenario == "resume":
        times = result["extra"]["resume_ms"]
        print(
            f"resume {args.missed} missed x {times['count']}: handshake -> last replayed "
            f"p50 {times['p50']} ms p99 {times['p99']} ms max {times['max']} ms"
        )
    if args.scenario == "roundtrip":
        times = result["extra"]["roundtrip_ms"]
        print(
            f"roundtrip x {times['count']}, one message in flight: producer -> consumer "
            f"p50 {times['p50']} ms p99 {times['p99']} ms max {times['max']} ms"
        )
    if args.scenario == "connections":
        extra = result["extra"]
        print(
            f"connected {extra['connected']} at {extra['connect_rate_per_s']}/s; server RSS "
            f"per connection {extra['server_rss_per_connection_bytes']} bytes"
        )
    if args.json_out == "-":
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0
