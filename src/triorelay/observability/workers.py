"""``GET /metrics`` under ``--workers N`` / ``hypercorn -w N``: every worker's series from any.

Hypercorn's workers share one listening socket, so a scrape reaches one worker, picked by the
kernel. Each worker therefore writes a *snapshot* of its samples every
``metrics_snapshot_seconds`` to a file of its own in ``metrics_snapshot_dir``, named
``<master pid>-<worker pid>.json`` and replaced atomically; the worker answering a scrape
writes its own snapshot first (so its figures are live), then exposes it with those of every
other worker of the same Hypercorn master whose snapshot is fresh. Each series gets a
``worker`` label (the worker's pid), so no figure is merged or lost: sum them in PromQL
(``sum without (worker) (...)``).

Every series a scrape shows comes from its worker's latest file, and each file only moves
forward: so a counter never goes back between two scrapes answered by different workers
(which Prometheus would take for a reset).

Bounds, all following from the settings:

- files: one per live worker; a snapshot older than :data:`STALE_INTERVALS` times
  ``metrics_snapshot_seconds`` is taken for a dead (or stuck) worker's, left out of scrapes and
  removed by whichever worker sees it (the files of a master that died go the same way). A
  worker that stops removes its own.
- size: :func:`snapshot_max_bytes` (from ``metrics_max_namespaces``); a larger file is skipped.
- staleness: another worker's figures are at most ``metrics_snapshot_seconds`` old, plus the
  time its write takes; the answering worker's are live.

The snapshot format and the merge are pure (:func:`encode`, :func:`decode`, :func:`merge`);
:class:`SnapshotDirectory` does the file I/O, synchronously, for a worker thread;
:class:`WorkerMetrics` is the supervised task and the scrape.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio
from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from triorelay.errors import SettingsError

log = logging.getLogger(__name__)

WORKER_LABEL = "worker"
STALE_INTERVALS = 3
"""A snapshot this many ``metrics_snapshot_seconds`` old is a dead worker's."""
FORMAT_VERSION = 1
_NAME = re.compile(r"^(\d+)-(\d+)\.json$")
_TEMPORARY = re.compile(r"^\.(\d+)-(\d+)\.json\.tmp$")


def snapshot_max_bytes(max_namespaces: int) -> int:
    """The largest snapshot read: 64 KiB for the fixed series, and 16 KiB per namespace (each
    namespace has 11 channel series of at most about 300 bytes each, with a 128-character
    name, and 4 stage-latency histograms of 20 samples of about 120 bytes each)."""
    return 64 * 1024 + 16 * 1024 * (max_namespaces + 1)


def default_directory() -> Path:
    """``triorelay-metrics-<uid>`` in the system's temporary directory."""
    return Path(tempfile.gettempdir()) / f"triorelay-metrics-{os.getuid()}"


# -- the snapshot and the merge: pure ------------------------------------------------------


def encode(families: Iterable[Metric]) -> bytes:
    """The snapshot of ``families``: JSON, one object per family with its samples."""
    return json.dumps(
        {
            "version": FORMAT_VERSION,
            "families": [
                {
                    "name": family.name,
                    "type": family.type,
                    "help": family.documentation,
                    "samples": [[s.name, s.labels, s.value] for s in family.samples],
                }
                for family in families
            ],
        },
        separators=(",", ":"),
    ).encode()


def decode(data: bytes) -> list[Metric]:
    """The families of a snapshot :func:`encode` made; ValueError if it is not one."""
    document = json.loads(data)
    if not isinstance(document, dict) or document.get("version") != FORMAT_VERSION:
        raise ValueError("not a snapshot of this version")
    families = []
    for entry in document["families"]:
        family = Metric(str(entry["name"]), str(entry["help"]), str(entry["type"]))
        for name, labels, value in entry["samples"]:
            if not isinstance(labels, dict):
                raise ValueError("labels must be an object")
            family.add_sample(str(name), {str(k): str(v) for k, v in labels.items()}, float(value))
        families.append(family)
    return families


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Another worker's families, and how old they were when read."""

    worker: str
    age_seconds: float
    families: list[Metric]


def merge(worker: str, own: Iterable[Metric], others: Sequence[Snapshot]) -> list[Metric]:
    """One family per name holding every worker's samples, each with its ``worker`` label.

    ``own`` (this worker's live families) come first, in their order; a family only another
    worker has follows. ``triorelay_worker_snapshot_age_seconds`` says which workers are in
    (0 for this one).
    """
    merged: dict[str, Metric] = {}

    def add(worker: str, families: Iterable[Metric]) -> None:
        for family in families:
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Metric(family.name, family.documentation, family.type)
            for sample in family.samples:
                into.add_sample(sample.name, {**sample.labels, WORKER_LABEL: worker}, sample.value)

    add(worker, own)
    ages = GaugeMetricFamily(
        "triorelay_worker_snapshot_age_seconds",
        "how old each worker's figures in this answer are (0: the worker answering)",
        labels=[WORKER_LABEL],
    )
    ages.add_metric([worker], 0.0)
    for snapshot in others:
        add(snapshot.worker, snapshot.families)
        ages.add_metric([snapshot.worker], snapshot.age_seconds)
    return [*merged.values(), ages]


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


# -- the directory: synchronous file I/O, for a worker thread ------------------------------


class SnapshotDirectory:
    """The snapshot files of the workers of Hypercorn master ``master``, this one ``worker``.

    Every method does blocking I/O: call it from a worker thread.
    """

    def __init__(
        self,
        directory: Path,
        *,
        master: int,
        worker: int,
        stale_seconds: float,
        max_bytes: int,
    ) -> None:
        self.directory = directory
        self.master = master
        self.worker = worker
        self.stale_seconds = stale_seconds
        self.max_bytes = max_bytes
        self.path = directory / f"{master}-{worker}.json"
        self._temporary = directory / f".{master}-{worker}.json.tmp"

    def prepare(self) -> None:
        """Create the directory (mode 0700) if need be, and check that no one else can write
        to it; raise :class:`SettingsError` saying what is wrong otherwise."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = self.directory.lstat()
        except OSError as error:
            raise SettingsError(f"metrics_snapshot_dir {self.directory}: {error}") from None
        if not stat.S_ISDIR(info.st_mode):
            raise SettingsError(f"metrics_snapshot_dir {self.directory} is not a directory")
        if info.st_uid != os.getuid() or info.st_mode & 0o022:
            raise SettingsError(
                f"metrics_snapshot_dir {self.directory} must belong to this user and be "
                "writable by no one else (another user could forge the metrics)"
            )

    def write(self, data: bytes) -> None:
        """Replace this worker's snapshot with ``data`` (atomically: a reader sees the old
        file or the new one). A directory removed meanwhile (a temporary-file cleaner) is
        made again; OSError for the rest."""
        try:
            self._temporary.write_bytes(data)
        except FileNotFoundError:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._temporary.write_bytes(data)
        os.replace(self._temporary, self.path)

    def remove(self) -> None:
        """Remove this worker's snapshot (it stops)."""
        for path in (self.path, self._temporary):
            path.unlink(missing_ok=True)

    def read_others(self, now: float) -> list[Snapshot]:
        """The fresh snapshots of this master's other workers, by pid; remove stale files of
        any master (dead workers')."""
        snapshots = []
        for entry in os.scandir(self.directory):
            match = _NAME.match(entry.name) or _TEMPORARY.match(entry.name)
            if match is None:
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # replaced or removed meanwhile
            age = now - info.st_mtime
            if age > self.stale_seconds:
                Path(entry.path).unlink(missing_ok=True)
                continue
            master, worker = int(match.group(1)), int(match.group(2))
            if entry.name.startswith(".") or master != self.master or worker == self.worker:
                continue
            if not stat.S_ISREG(info.st_mode) or info.st_size > self.max_bytes:
                log.warning(
                    "skipped the metrics snapshot %s: over %d bytes", entry.path, info.st_size
                )
                continue
            try:
                families = decode(Path(entry.path).read_bytes())
            except FileNotFoundError:
                continue  # its worker stopped meanwhile
            except (ValueError, KeyError, TypeError) as error:
                log.warning("skipped the metrics snapshot %s: %s", entry.path, error)
                continue
            snapshots.append(Snapshot(str(worker), max(age, 0.0), families))
        snapshots.sort(key=lambda snapshot: int(snapshot.worker))
        return snapshots


# -- the task and the scrape ---------------------------------------------------------------


class WorkerMetrics:
    """This worker's part in ``GET /metrics`` across the workers of one Hypercorn master.

    ``source`` is this worker's own registry (what ``GET /metrics`` shows of one process).
    """

    def __init__(self, source: Collector, directory: SnapshotDirectory, interval_seconds: float):
        self._source = source
        self.directory = directory
        self.interval_seconds = interval_seconds
        # One write at a time, in the order the figures were read: the file only moves
        # forward, and two threads never write the temporary file at once.
        self._writing = trio.Lock()
        self._failing = False  # a failure is logged once, not every interval

    @property
    def worker(self) -> str:
        return str(self.directory.worker)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write a snapshot now (then ``task_status.started()``) and every
        ``interval_seconds``, until cancelled; remove it on the way out."""
        try:
            await self.publish()
            task_status.started()
            while True:
                await trio.sleep(self.interval_seconds)
                await self.publish()
        finally:
            self.directory.remove()  # two unlinks: not worth a thread in a finally

    async def publish(self) -> list[Metric]:
        """Write this worker's snapshot: its figures read here, the file written in a thread.
        Return the figures read.

        A write that fails (a full disk) is logged and tried again at the next interval:
        the other workers' scrapes then lack this worker, but the relay stays healthy.
        """
        async with self._writing:
            families = list(self._source.collect())
            try:
                await trio.to_thread.run_sync(self.directory.write, encode(families))
            except OSError as error:
                if not self._failing:
                    log.warning(
                        "cannot write the metrics snapshot %s: %s", self.directory.path, error
                    )
                self._failing = True
            else:
                self._failing = False
        return families

    async def exposition(self) -> bytes:
        """Every fresh worker's series, in the Prometheus text format.

        This worker's snapshot is written first: a later scrape answered by another worker
        shows this worker's figures as of now at least.
        """
        own = await self.publish()
        try:
            others = await trio.to_thread.run_sync(self.directory.read_others, time.time())
        except OSError as error:  # the directory is gone: this worker answers for itself
            log.warning(
                "cannot read the metrics snapshots in %s: %s", self.directory.directory, error
            )
            others = []
        return generate_latest(_Families(merge(self.worker, own, others)))
