"""Runs producers and consumers in this process and in worker processes, on one start signal.

A run has four phases, the same in every process:

1. connect every consumer (and stalled consumer), then every producer, then report *ready*;
2. on *go* (a shared ``time.monotonic_ns()`` start instant, system-wide on Linux so processes
   agree), producers follow their open-loop schedules until the send cutoff;
3. producers drain acks until all are back or the drain deadline, then report *sent*;
4. consumers stop when the orchestrator's *expect* target is met or at the drain deadline.

The orchestrator (:func:`execute`) talks to worker processes (``python -m loadtest.workers``)
with one JSON object per line on their stdin/stdout: it writes the :class:`RoleSpec`, reads
``{"ready": ...}``, writes ``{"go": start_ns}``, reads ``{"sent": ...}``, writes
``{"expect": n | null}`` and reads ``{"result": ...}``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import trio

from loadtest.acked import consume_acked
from loadtest.clients import (
    DeliveryCounter,
    ProducerPlan,
    ProducerSlot,
    Stopper,
    consume,
    produce,
    trio_deadline,
)
from loadtest.codec import new_run_id, padding_for
from loadtest.endpoints import Ack, endpoint_url
from loadtest.lean import consume_lean, hold_stalled, produce_lean
from loadtest.monitor import ProcessSampler, Sample, cpu_percent_between, usable_cores
from loadtest.polled import consume_polled
from loadtest.schedule import NS_PER_S, RateSchedule, split_rate
from loadtest.stats import DeliveryLedger, RoleStats, merge
from loadtest.tokens import TokenIn, token_headers, token_url
from loadtest.unbatched import produce_unbatched

logger = logging.getLogger(__name__)

Delivery = Literal["broadcast", "competing"]

#: How producers write (``--sender``): ``unbatched``, one message per write at its own time
#: (:mod:`loadtest.unbatched`; the default, what most real producers do); ``batched``, the
#: lean sender writing every message due in a 1 ms tick in one write
#: (:func:`~loadtest.lean.produce_lean`); ``trio-websocket``, one ``send_message`` per message
#: on the trio-websocket library (:func:`~loadtest.clients.produce`).
Sender = Literal["unbatched", "batched", "trio-websocket"]
#: The senders, the default first.
SENDERS: Final[tuple[Sender, ...]] = ("unbatched", "batched", "trio-websocket")
#: What consumers read with (``--consumer-client``): ``lean``, the wsproto client, a task per
#: connection (:func:`~loadtest.lean.consume_lean`; the default); ``polled``, the same
#: handshake, then one reader for every consumer of the process, parsing frames itself
#: (:func:`~loadtest.polled.consume_polled`; the cheapest per message, for fan-outs); or the
#: trio-websocket library (:func:`~loadtest.clients.consume`).
ConsumerClient = Literal["lean", "polled", "trio-websocket"]
#: The consumer clients, the default first.
CONSUMER_CLIENTS: Final[tuple[ConsumerClient, ...]] = ("lean", "polled", "trio-websocket")
#: How consumers settle what they get: ``auto``, done once delivered (every channel but an
#: acked queue); ``explicit``, the acked consumer of an acked queue channel, acking each job
#: (:func:`~loadtest.acked.consume_acked`, on the lean client).
ConsumerAck = Literal["auto", "explicit"]
#: The consumer function of each consumer client.
CONSUMERS: Final[Mapping[ConsumerClient, Callable[..., Awaitable[None]]]] = {
    "lean": consume_lean,
    "polled": consume_polled,
    "trio-websocket": consume,
}
#: The producer client of each sender.
PRODUCERS: Final[Mapping[Sender, Callable[..., Awaitable[None]]]] = {
    "unbatched": produce_unbatched,
    "batched": produce_lean,
    "trio-websocket": produce,
}

#: The directory holding the ``loadtest`` package, put on workers' ``PYTHONPATH`` so they import
#: the same code whether or not the package is installed.
_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Lead time between the go decision and the first scheduled send, so every process is waiting.
START_LEAD_NS = 100_000_000


@dataclass
class RoleSpec:
    """What one process runs; JSON-serialisable so it can be shipped to a worker.

    ``producers`` are the producer indices run here, out of ``total_producers`` sharing
    ``rate_per_s``. Consumers connect to ``consumer_url`` when set (another relay process
    sharing the channel through a broker), else to ``url`` like the producers. Sends stop at
    ``duration_s`` plus half of ``drain_s``; everything stops at ``duration_s + drain_s`` after
    the start. ``sender`` is how producers write (:data:`Sender`), ``consumer_client`` what
    consumers read with (:data:`ConsumerClient`), ``consumer_ack`` whether they ack each job
    (:data:`ConsumerAck`: ``explicit`` reads with the acked consumer whatever the client).
    ``token`` (kept out of ``repr``) goes on every handshake as ``token_in`` says
    (:mod:`loadtest.tokens`).
    """

    url: str
    run_id: str = "00000000"
    consumer_url: str | None = None
    channel: str | None = None
    ack: Ack | None = None
    producers: list[int] = field(default_factory=list)
    total_producers: int = 0
    consumers: int = 0
    stalled_consumers: int = 0
    sender: Sender = "unbatched"
    consumer_client: ConsumerClient = "lean"
    consumer_ack: ConsumerAck = "auto"
    track_ledger: bool = False
    payload_bytes: int = 128
    rate_per_s: float = 100.0
    duration_s: float = 1.0
    drain_s: float = 2.0
    connect_timeout_s: float = 10.0
    connect_concurrency: int = 64
    token: str | None = field(default=None, repr=False)
    token_in: TokenIn = "header"

    def to_json(self) -> str:
        """Return the spec as one line of JSON."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RoleSpec:
        """Inverse of :meth:`to_json`; raises ``ValueError``/``TypeError`` on bad input."""
        return cls(**json.loads(text))

    def endpoints(self) -> tuple[str, str]:
        """Return ``(producer URL, consumer URL)`` with role, channel, ack mode and, with
        ``token_in`` ``query``, the token."""
        return (
            token_url(
                endpoint_url(self.url, "producer", self.channel, self.ack),
                self.token,
                self.token_in,
            ),
            token_url(
                endpoint_url(self.consumer_url or self.url, "consumer", self.channel),
                self.token,
                self.token_in,
            ),
        )

    def headers(self) -> list[tuple[bytes, bytes]]:
        """Return the extra headers of every handshake (the token, with ``token_in`` header)."""
        return token_headers(self.token, self.token_in)

    def window_ns(self, start_ns: int) -> tuple[int, int, int]:
        """Return ``(end_ns, send_cutoff_ns, drain_deadline_ns)`` for a run starting at start."""
        end = start_ns + int(self.duration_s * NS_PER_S)
        drain = int(self.drain_s * NS_PER_S)
        return end, end + drain // 2, end + drain


async def start_many(
    nursery: trio.Nursery,
    starters: Sequence[Callable[..., Awaitable[None]]],
    concurrency: int,
) -> int:
    """``nursery.start`` each starter (which reports ``started(bool)``), ``concurrency`` at once.

    Returns how many reported ``True``. The started tasks live on in ``nursery``.
    """
    limiter = trio.CapacityLimiter(max(1, concurrency))
    ok = 0

    async def one(starter: Callable[..., Awaitable[None]]) -> None:
        nonlocal ok
        async with limiter:
            if await nursery.start(starter):
                ok += 1

    async with trio.open_nursery() as starting:
        for starter in starters:
            starting.start_soon(one, starter)
    return ok


class LocalRun:
    """Runs one :class:`RoleSpec` in this process; see the module docstring for the phases.

    Call ``await nursery.start(run.run)`` (returns once connected), then :meth:`begin`; await
    :attr:`producers_done`, then call :meth:`expect`. :attr:`stats` is final once ``run``
    returns.
    """

    def __init__(self, spec: RoleSpec) -> None:
        self.spec = spec
        self.stats = RoleStats(ledger=DeliveryLedger() if spec.track_ledger else None)
        self.counter = DeliveryCounter()
        self.stopper = Stopper()
        self.producers_done = trio.Event()
        self._go = trio.Event()
        self._schedules: dict[int, RateSchedule] = {}
        self._plans: dict[int, ProducerPlan] = {}
        self._start_ns = 0
        self._sending = len(spec.producers)
        self._sending_done_at: tuple[float, float] | None = None
        #: Called once every delivery expected here has arrived (not when the deadline ends
        #: the wait): the orchestrator reads the server's CPU then.
        self.on_all_delivered: Callable[[], None] | None = None

    def begin(self, start_ns: int) -> None:
        """Fix the start instant and release the producers. Call once, after ``run`` started."""
        spec = self.spec
        end, cutoff, drain_deadline = spec.window_ns(start_ns)
        if spec.total_producers:
            schedules = split_rate(start_ns, spec.rate_per_s, end - start_ns, spec.total_producers)
            padding = padding_for(spec.payload_bytes)
            for i in spec.producers:
                self._schedules[i] = schedules[i]
                self._plans[i] = ProducerPlan(
                    run=spec.run_id,
                    index=i,
                    padding=padding,
                    send_cutoff_ns=cutoff,
                    drain_deadline_ns=drain_deadline,
                    expect_acks=spec.ack != "none",
                    on_sending_done=self._one_stopped_sending,
                )
        self.stopper.set_deadline(trio_deadline(drain_deadline))
        self._start_ns = start_ns
        self._go.set()

    def expect(self, target: int | None) -> None:
        """Let consumers stop once they delivered ``target`` in total (``None``: at deadline)."""
        if target is not None:
            self.counter.set_target(target)

    def _one_stopped_sending(self) -> None:
        self._sending -= 1
        if self._sending == 0:
            self._sending_done_at = (time.monotonic(), _process_cpu_s())

    def _plan_for(self, index: int) -> tuple[RateSchedule, ProducerPlan]:
        return self._schedules[index], self._plans[index]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect everything, report started, then run until the consumers stop."""
        spec = self.spec
        stats = self.stats
        producer_url, consumer_url = spec.endpoints()
        headers = spec.headers()
        timeout = spec.connect_timeout_s
        consumer_fn = (
            consume_acked if spec.consumer_ack == "explicit" else CONSUMERS[spec.consumer_client]
        )
        async with trio.open_nursery() as consumers:
            await start_many(
                consumers,
                [
                    functools.partial(
                        consumer_fn,
                        consumer_url,
                        spec.run_id,
                        stats,
                        self.counter,
                        self.stopper,
                        connect_timeout_s=timeout,
                        headers=headers,
                    )
                    for _ in range(spec.consumers)
                ]
                + [
                    functools.partial(
                        hold_stalled,
                        consumer_url,
                        stats,
                        self.stopper,
                        connect_timeout_s=timeout,
                        headers=headers,
                    )
                    for _ in range(spec.stalled_consumers)
                ],
                spec.connect_concurrency,
            )
            producer_fn = PRODUCERS[spec.sender]
            async with trio.open_nursery() as producers:
                await start_many(
                    producers,
                    [
                        functools.partial(
                            producer_fn,
                            ProducerSlot(
                                producer_url,
                                stats,
                                lambda: self._go,
                                self._plan_for,
                                i,
                                timeout,
                                headers,
                            ),
                        )
                        for i in spec.producers
                    ],
                    spec.connect_concurrency,
                )
                task_status.started()
                await self._go.wait()
                wall0, cpu0 = time.monotonic(), _process_cpu_s()
            self.producers_done.set()
            if spec.consumers or spec.stalled_consumers:
                with self.stopper.scope():
                    await self.counter.reached.wait()
                    if self.on_all_delivered is not None:
                        self.on_all_delivered()
            # The CPU window is the busy one: until the last send when this process produces
            # (the ack drain would dilute it), else until every expected message arrived (or
            # the deadline). A process with no role here (the orchestrator) records nothing.
            wall1, cpu1 = self._sending_done_at or (time.monotonic(), _process_cpu_s())
            if spec.producers or spec.consumers:
                stats.cpu_percent.append(round(cpu_percent_between(wall0, cpu0, wall1, cpu1), 1))
            self.stopper.stop()


def _process_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


class LineChannel:
    """Newline-delimited JSON objects over a pair of trio streams (one reader, one writer)."""

    MAX_LINE_BYTES = 256 * 1024 * 1024

    def __init__(self, receive: trio.abc.ReceiveStream, send: trio.abc.SendStream) -> None:
        self._receive = receive
        self._send = send
        self._buffer = bytearray()

    async def send(self, obj: dict[str, Any]) -> None:
        """Write one object as one line."""
        await self._send.send_all(json.dumps(obj).encode() + b"\n")

    async def receive(self) -> dict[str, Any] | None:
        """Read the next object, or ``None`` at end of stream; ``ValueError`` if malformed."""
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[: newline + 1]
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError(f"expected a JSON object, got {line[:80]!r}")
                return obj
            if len(self._buffer) > self.MAX_LINE_BYTES:
                raise ValueError("line too long")
            data = await self._receive.receive_some(1 << 16)
            if not data:
                return None
            self._buffer += data


class WorkerProcess:
    """One ``python -m loadtest.workers`` child, driven through a :class:`LineChannel`.

    ``await nursery.start(worker.run)`` spawns it and returns once it reports ready; the child is
    killed if the run is cancelled. :attr:`stats` holds its result after ``run`` returns.
    """

    def __init__(self, spec: RoleSpec) -> None:
        self.spec = spec
        self.stats: RoleStats | None = None
        self.sent: dict[int, int] = {}
        self.sent_reported = trio.Event()
        self.pid: int | None = None
        self._channel: LineChannel | None = None

    async def send(self, obj: dict[str, Any]) -> None:
        """Send one control object to the running child."""
        assert self._channel is not None, "send() before run() started"
        await self._channel.send(obj)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Spawn the child, report started when it is ready, collect its result."""
        cmd = [sys.executable, "-m", "loadtest.workers"]
        env = dict(os.environ)
        env["PYTHONPATH"] = _SOURCE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
        proc = await trio.lowlevel.open_process(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        try:
            assert proc.stdout is not None
            assert proc.stdin is not None
            self.pid = proc.pid
            channel = self._channel = LineChannel(proc.stdout, proc.stdin)
            await channel.send({"spec": dataclasses.asdict(self.spec)})
            ready = await channel.receive()
            if ready is None or "ready" not in ready:
                raise RuntimeError(f"worker {proc.pid} failed before ready: {ready!r}")
            task_status.started()
            while (msg := await channel.receive()) is not None:
                if "sent" in msg:
                    self.sent = {int(k): int(v) for k, v in msg["sent"].items()}
                    self.sent_reported.set()
                elif "result" in msg:
                    self.stats = RoleStats.from_wire(msg["result"])
                    break
            await proc.stdin.aclose()
            await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                with trio.CancelScope(shield=True):
                    await proc.wait()
        if self.stats is None:
            raise RuntimeError(f"worker {self.pid} exited with {proc.returncode} and no result")


@dataclass
class RunOutcome:
    """The merged result of :func:`execute`.

    ``expected`` is the number of deliveries a correct server would make under the given
    delivery semantics (``sent`` times normal consumers for broadcast, ``sent`` for competing).
    """

    stats: RoleStats
    start_ns: int
    expected: int
    duration_s: float
    connect_s: float
    server_samples: list[Sample] = field(default_factory=list)
    generator_samples: dict[str, list[Sample]] = field(default_factory=dict)
    worker_pids: list[int] = field(default_factory=list)
    #: CPUs the generator's processes could run on (this process's affinity, inherited).
    generator_cores: int | None = None
    #: The server's CPU seconds from the moment every connection was open until the last
    #: expected delivery arrived (connection set-up and the consumers' close left out), or
    #: until the run's end when consumers run in worker processes or not everything arrived;
    #: None without a server PID.
    server_cpu_s_connected: float | None = None


def split_spec(spec: RoleSpec, producer_procs: int, consumer_procs: int) -> list[RoleSpec]:
    """Split ``spec`` into the in-process part (first) and one part per worker process.

    With ``producer_procs`` > 0 every producer runs in a worker (indices dealt round-robin); with
    ``consumer_procs`` > 0 every normal consumer does (counts split as evenly as possible).
    Stalled consumers always stay in process. Pure; the union of the parts is ``spec``.
    """
    local = dataclasses.replace(spec, producers=[], consumers=0)
    parts: list[RoleSpec] = []
    indices = list(range(spec.total_producers)) if spec.producers == [] else spec.producers
    if producer_procs > 0:
        for w in range(producer_procs):
            mine = indices[w::producer_procs]
            if mine:
                parts.append(
                    dataclasses.replace(spec, producers=mine, consumers=0, stalled_consumers=0)
                )
    else:
        local.producers = indices
    if consumer_procs > 0:
        for w in range(consumer_procs):
            n = spec.consumers // consumer_procs + (w < spec.consumers % consumer_procs)
            if n:
                parts.append(
                    dataclasses.replace(spec, producers=[], consumers=n, stalled_consumers=0)
                )
    else:
        local.consumers = spec.consumers
    return [local, *parts]


def expected_deliveries(sent: int, consumers: int, delivery: Delivery) -> int:
    """Deliveries a correct server makes: each message to every consumer, or to exactly one."""
    if consumers <= 0:
        return 0
    return sent * consumers if delivery == "broadcast" else sent


ProgressFn = Callable[[float], None]


async def execute(
    spec: RoleSpec,
    *,
    delivery: Delivery,
    producer_procs: int = 0,
    consumer_procs: int = 0,
    server_pid: int | None = None,
    sample_interval_s: float = 0.5,
    progress: ProgressFn | None = None,
) -> RunOutcome:
    """Run ``spec`` (split over worker processes as asked) once and merge the results.

    ``spec.producers`` may be empty to mean all of ``range(spec.total_producers)``. Samples the
    server (by ``server_pid``) and every generator process while running. ``progress`` is called
    with the fraction of the send window elapsed. Returns when every process has finished; a
    worker that dies raises ``RuntimeError``.
    """
    # A fresh run id per run: consumers ignore what earlier runs left in the server.
    spec = dataclasses.replace(spec, run_id=new_run_id(os.urandom(4)))
    parts = split_spec(spec, producer_procs, consumer_procs)
    local = LocalRun(parts[0])
    workers = [WorkerProcess(p) for p in parts[1:]]
    server_samples: list[Sample] = []
    generator_samples: dict[str, list[Sample]] = {"main": []}
    stop_sampling = trio.Event()
    t0 = time.monotonic()

    # The outer nursery holds the sampling; the inner one the parts of the run, so sampling
    # stops once every part (this process's and each worker's) has returned.
    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as parts_nursery:
            for w in workers:
                await parts_nursery.start(w.run)
            await parts_nursery.start(local.run)
            connect_s = time.monotonic() - t0
            samplers: list[tuple[ProcessSampler, list[Sample]]] = []
            server_sampler = None
            cpu_connected = None
            cpu_delivered: list[float | None] = []
            if server_pid is not None:
                server_sampler = ProcessSampler(server_pid, include_children=True)
                cpu_connected = server_sampler.cpu_seconds()
                samplers.append((server_sampler, server_samples))
            if parts[0].consumers and not any(w.spec.consumers for w in workers):
                # Every consumer is here: the window ends as the last delivery arrives,
                # before the consumers close (their tear-down is not the traffic's cost):
                # the server's CPU is read then, and the sampling ends with one last sample
                # (1,000 consumers closing took the generator's process 98 % of its core in
                # the last half second, which flagged a run below 30 % as generator-bound),
                # but with stalled consumers: the slow scenario's memory series runs on.
                stalled = parts[0].stalled_consumers

                def all_delivered(sampler: ProcessSampler | None = server_sampler) -> None:
                    if sampler is not None:
                        cpu_delivered.append(sampler.cpu_seconds())
                    if not stalled:
                        stop_sampling.set()

                local.on_all_delivered = all_delivered
            samplers.append((ProcessSampler(os.getpid()), generator_samples["main"]))
            for n, w in enumerate(workers):
                assert w.pid is not None
                samplers.append(
                    (ProcessSampler(w.pid), generator_samples.setdefault(f"worker{n}", []))
                )
            nursery.start_soon(sample_loop, samplers, sample_interval_s, stop_sampling)

            start_ns = time.monotonic_ns() + START_LEAD_NS
            local.begin(start_ns)
            for w in workers:
                await w.send({"go": start_ns})
            if progress is not None:
                nursery.start_soon(_progress_loop, progress, start_ns, spec.duration_s, local)

            await local.producers_done.wait()
            sent = local.stats.counters.sent
            for w in workers:
                if w.spec.producers:
                    await w.sent_reported.wait()
                    sent += sum(w.sent.values())
            normal_consumers = spec.consumers
            expected = expected_deliveries(sent, normal_consumers, delivery)
            holders = [p for p in parts if p.consumers > 0]
            if delivery == "broadcast":
                local.expect(sent * parts[0].consumers if parts[0].consumers else None)
                for w in workers:
                    await w.send({"expect": sent * w.spec.consumers if w.spec.consumers else None})
            else:
                only_local = len(holders) == 1 and parts[0].consumers > 0
                local.expect(expected if only_local else None)
                for w in workers:
                    await w.send({"expect": expected if holders == [w.spec] else None})
        if cpu_delivered:
            cpu_done = cpu_delivered[0]
        else:  # consumers in workers, or not everything arrived: the run's end
            cpu_done = None if server_sampler is None else server_sampler.cpu_seconds()
        stop_sampling.set()

    stats = merge([local.stats, *(w.stats for w in workers if w.stats is not None)])
    return RunOutcome(
        stats=stats,
        start_ns=start_ns,
        expected=expected,
        duration_s=spec.duration_s,
        connect_s=round(connect_s, 3),
        server_samples=server_samples,
        generator_samples=generator_samples,
        worker_pids=[w.pid for w in workers if w.pid is not None],
        generator_cores=usable_cores(),
        server_cpu_s_connected=(
            None
            if cpu_connected is None or cpu_done is None
            else round(cpu_done - cpu_connected, 4)
        ),
    )


async def sample_loop(
    samplers: Sequence[tuple[ProcessSampler, list[Sample]]],
    interval_s: float,
    stop: trio.Event,
) -> None:
    """Sample every process each ``interval_s`` until ``stop`` fires (one last sample then,
    without a CPU figure if it comes less than half an interval after the one before)."""
    last = -interval_s
    while True:
        now = trio.current_time()
        percent = not stop.is_set() or now - last >= interval_s / 2
        last = now
        for sampler, out in samplers:
            sample = sampler.sample(percent=percent)
            if sample is not None:
                out.append(sample)
        if stop.is_set():
            return
        with trio.move_on_after(interval_s):
            await stop.wait()


async def _progress_loop(
    progress: ProgressFn, start_ns: int, duration_s: float, local: LocalRun
) -> None:
    """Report the elapsed fraction of the send window about four times a second."""
    while not local.producers_done.is_set():
        elapsed = (time.monotonic_ns() - start_ns) / NS_PER_S
        progress(min(1.0, max(0.0, elapsed / duration_s)) if duration_s > 0 else 1.0)
        with trio.move_on_after(0.25):
            await local.producers_done.wait()
    progress(1.0)
