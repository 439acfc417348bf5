"""GET /metrics under several workers: any worker answers for every live worker, exactly."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

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
