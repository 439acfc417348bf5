"""GET /metrics under several workers: any worker answers for every live worker, exactly."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import trio
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from wsproto import events as ws_events

from tests.helpers import RawWebSocket, wait_until
from tests.processes import TWO_WORKERS, relay_process, worker_serving
from tests.redis_server import RedisServer
from triorelay.errors import SettingsError
from triorelay.observability.workers import (
    SnapshotDirectory,
    WorkerMetrics,
    decode,
    encode,
    merge,
    snapshot_max_bytes,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class _Fixed(Collector):
    """A worker's figures: ``messages`` in, one open connection."""

    def __init__(self, messages: int) -> None:
        self.messages = messages

    def collect(self) -> Iterator[Metric]:
        counter = CounterMetricFamily("triorelay_x", "x", labels=["role"])
        counter.add_metric(["producer"], self.messages)
        yield counter
        yield GaugeMetricFamily("triorelay_open", "open", value=1)


def _registry(messages: int) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(messages))
    return registry


def _directory(path: Path, worker: int, master: int = 1) -> SnapshotDirectory:
    return SnapshotDirectory(
        path, master=master, worker=worker, stale_seconds=3.0, max_bytes=snapshot_max_bytes(100)
    )


def test_a_snapshot_decodes_to_the_families_it_was_made_of() -> None:
    """encode then decode gives the same names, types, help and samples."""
    families = list(_Fixed(7).collect())
    again = decode(encode(families))
    assert [(f.name, f.type, f.documentation, f.samples) for f in again] == [
        (f.name, f.type, f.documentation, f.samples) for f in families
    ]


@pytest.mark.parametrize("data", [b"", b"[]", b'{"version": 99, "families": []}', b"{"])
def test_anything_but_a_snapshot_is_refused(data: bytes) -> None:
    """decode raises ValueError for a file that is not a snapshot of this version."""
    with pytest.raises(ValueError):  # noqa: PT011 - json's errors are ValueErrors too
        decode(data)


def test_merge_keeps_each_workers_samples_apart_by_a_worker_label() -> None:
    """One family per name, every worker's samples in it, and each worker's snapshot age."""
    from triorelay.observability.workers import Snapshot

    merged = merge("10", _Fixed(3).collect(), [Snapshot("20", 1.5, list(_Fixed(4).collect()))])
    by_name = {family.name: family for family in merged}
    assert [(s.labels, s.value) for s in by_name["triorelay_x"].samples] == [
        ({"role": "producer", "worker": "10"}, 3),
        ({"role": "producer", "worker": "20"}, 4),
    ]
    ages = by_name["triorelay_worker_snapshot_age_seconds"].samples
    assert [(s.labels["worker"], s.value) for s in ages] == [("10", 0.0), ("20", 1.5)]


async def test_a_worker_answers_for_the_other_workers_of_its_master(tmp_path: Path) -> None:
    """Worker 100's scrape has its own figures and those of 200 (same master), not those of
    300 (another master's)."""
    ours = WorkerMetrics(_registry(3), _directory(tmp_path, 100), 1.0)
    other = WorkerMetrics(_registry(4), _directory(tmp_path, 200), 1.0)
    stranger = WorkerMetrics(_registry(5), _directory(tmp_path, 300, master=2), 1.0)
    for worker in (ours, other, stranger):
        await worker.publish()
    samples = _samples((await ours.exposition()).decode())
    counts = {
        dict(labels)["worker"]: value
        for (name, labels), value in samples.items()
        if name == "triorelay_x_total"
    }
    assert counts == {"100": 3, "200": 4}


async def test_a_counter_never_goes_back_between_scrapes_of_different_workers(
    tmp_path: Path,
) -> None:
    """Worker 100 answers with 3 (its snapshot then said 1): a later scrape answered by 200
    shows 100's 3, never the 1 of its periodic snapshot."""
    figures = _Fixed(1)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(figures)
    ours = WorkerMetrics(registry, _directory(tmp_path, 100), 1.0)
    other = WorkerMetrics(_registry(4), _directory(tmp_path, 200), 1.0)
    await ours.publish()
    figures.messages = 3
    first = _samples((await ours.exposition()).decode())
    figures.messages = 5  # not written yet
    second = _samples((await other.exposition()).decode())
    series = ("triorelay_x_total", (("role", "producer"), ("worker", "100")))
    assert (first[series], second[series]) == (3, 3)


async def test_a_dead_workers_snapshot_is_left_out_and_removed(tmp_path: Path) -> None:
    """A snapshot older than the staleness bound (its worker died) is not shown and its file
    goes, whichever master it was of; a live worker's file stays."""
    ours = WorkerMetrics(_registry(3), _directory(tmp_path, 100), 1.0)
    dead = _directory(tmp_path, 200)
    dead_master = _directory(tmp_path, 300, master=2)
    for directory in (dead, dead_master):
        directory.write(encode(_Fixed(4).collect()))
        old = time.time() - 10
        os.utime(directory.path, (old, old))
    await ours.publish()
    samples = _samples((await ours.exposition()).decode())
    workers = {dict(labels)["worker"] for (_, labels) in samples}
    assert workers == {"100"}
    assert os.listdir(tmp_path) == ["1-100.json"]


async def test_a_worker_removes_its_snapshot_when_it_stops(tmp_path: Path) -> None:
    """The task writes the snapshot before it reports started, and removes it when cancelled."""
    worker = WorkerMetrics(_registry(3), _directory(tmp_path, 100), 1.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        assert worker.directory.path.exists()
        nursery.cancel_scope.cancel()
    assert os.listdir(tmp_path) == []


async def test_a_removed_directory_is_made_again_and_a_scrape_still_answers(
    tmp_path: Path,
) -> None:
    """The directory removed under the workers (a temporary-file cleaner): the next write
    makes it again; a scrape meanwhile answers with this worker's figures."""
    directory = tmp_path / "snapshots"
    ours = WorkerMetrics(_registry(3), _directory(directory, 100), 1.0)
    ours.directory.prepare()
    directory.rmdir()
    samples = _samples((await ours.exposition()).decode())
    assert samples[("triorelay_x_total", (("role", "producer"), ("worker", "100")))] == 3
    assert os.listdir(directory) == ["1-100.json"]


def test_an_oversized_or_foreign_snapshot_is_skipped(tmp_path: Path) -> None:
    """A snapshot over the size bound, or not a snapshot, is skipped (and logged)."""
    reader = _directory(tmp_path, 100)
    (tmp_path / "1-200.json").write_bytes(b" " * (reader.max_bytes + 1))
    (tmp_path / "1-300.json").write_bytes(b"not json")
    (tmp_path / "unrelated.txt").write_bytes(b"kept")
    assert reader.read_others(time.time()) == []
    assert (tmp_path / "unrelated.txt").exists()


def test_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    """metrics_snapshot_dir writable by others could hold forged metrics: a SettingsError."""
    tmp_path.chmod(0o777)
    with pytest.raises(SettingsError, match="writable by no one else"):
        _directory(tmp_path, 100).prepare()
    created = _directory(tmp_path / "new", 100)
    tmp_path.chmod(0o700)
    created.prepare()
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o700


# -- real processes: hypercorn -w 2 --------------------------------------------------------

PRODUCERS_PER_WORKER = 2


async def _scrape(port: int, workers: list[psutil.Process]) -> tuple[int, Samples]:
    """GET /metrics on a new connection; (the pid of the worker that answered, its samples).

    The connection is kept alive until the worker holding it is found.
    """
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += await stream.receive_some()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head.decode()
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            body += await stream.receive_some()
        pid = worker_serving(workers, stream.socket.getsockname()[1])
    return pid, _samples(body.decode())


def _per_worker(samples: Samples, name: str, **labels: str) -> dict[int, float]:
    wanted = set(labels.items())
    return {
        int(dict(key)["worker"]): value
        for (sample, key), value in samples.items()
        if sample == name and wanted <= set(key)
    }


@pytest.mark.parametrize("launcher", sorted(TWO_WORKERS))
async def test_any_of_two_workers_answers_for_both_exactly(
    redis_server: RedisServer, tmp_path: Path, launcher: str
) -> None:
    """hypercorn -w 2 / serve --workers 2: producers on both workers send known numbers of
    messages; a scrape, whichever worker answers it, counts each worker's messages and
    connections exactly."""
    env = {
        "TRIORELAY_BROKER": redis_server.url,
        "TRIORELAY_METRICS_SNAPSHOT_SECONDS": "0.2",
        "TRIORELAY_METRICS_SNAPSHOT_DIR": str(tmp_path / "snapshots"),
    }
    async with relay_process(TWO_WORKERS[launcher], env) as relay:
        workers = psutil.Process(relay.process.pid).children()
        sent: Counter[int] = Counter()
        producers: Counter[int] = Counter()
        # Connect producers until both workers serve enough of them (the kernel picks).
        with trio.fail_after(30):
            count = 0
            while len(producers) < 2 or min(producers.values()) < PRODUCERS_PER_WORKER:
                count += 1
                raw = await RawWebSocket.connect(relay.port, "/ws/producer/work.p?ack=id", 65536)
                try:
                    pid = worker_serving(workers, raw.sock.getsockname()[1])
                    for i in range(count):
                        await raw.send_text(f"m{i}")
                    await raw.read_messages(count)  # every ack: all published
                    await raw.send_events(ws_events.CloseConnection(code=1000))
                    await raw.wait_for_close()
                finally:
                    raw.close()
                sent[pid] += count
                producers[pid] += 1
        assert len(sent) == 2

        answered: set[int] = set()

        async def both_answered_exactly() -> bool:
            pid, samples = await _scrape(relay.port, workers)
            messages = _per_worker(
                samples, "triorelay_connection_messages_total", role="producer", direction="in"
            )
            ended = _per_worker(
                samples, "triorelay_connections_ended_total", role="producer", close="client"
            )
            if messages == dict(sent) and ended == dict(producers):
                answered.add(pid)
            return answered == set(sent)

        # Snapshots are written every 0.2 s: wait until each worker has answered with both.
        await wait_until(both_answered_exactly, timeout_seconds=30)
