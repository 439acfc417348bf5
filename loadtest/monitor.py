"""CPU and RSS sampling of processes by PID (psutil), plus the pure summaries of the samples.

CPU percent is measured from ``cpu_times`` deltas over wall-clock deltas, so 100.0 means one
full core; a multi-threaded process can exceed 100. The first sample of a process only sets the
baseline and reports ``None``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psutil  # type: ignore[import-untyped]

logger = logging.getLogger(__name__)

#: A generator process at or above this CPU percent (of one core) is called saturated.
GENERATOR_BOUND_PERCENT = 90.0


@dataclass(frozen=True)
class Sample:
    """One measurement of one process: seconds since monitoring began, CPU % and RSS bytes."""

    t_s: float
    cpu_percent: float | None
    rss_bytes: int


def cpu_percent_between(wall0_s: float, cpu0_s: float, wall1_s: float, cpu1_s: float) -> float:
    """Return the CPU use between two readings as a percent of one core (0 if no time passed)."""
    wall = wall1_s - wall0_s
    if wall <= 0:
        return 0.0
    return max(0.0, 100.0 * (cpu1_s - cpu0_s) / wall)


class ProcessSampler:
    """Samples one process (and optionally its children, summed) on demand.

    :meth:`sample` never raises for a vanished process: it returns ``None`` and
    :attr:`gone` turns true. It makes blocking ``/proc`` reads of a few microseconds each.
    """

    def __init__(self, pid: int, *, include_children: bool = False) -> None:
        self.pid = pid
        self.include_children = include_children
        self.gone = False
        self._proc = psutil.Process(pid)
        self._origin = time.monotonic()
        self._last: tuple[float, float] | None = None

    def _read(self) -> tuple[float, int]:
        procs = [self._proc]
        if self.include_children:
            procs += self._proc.children(recursive=True)
        cpu = 0.0
        rss = 0
        for proc in procs:
            try:
                times = proc.cpu_times()
                cpu += times.user + times.system
                rss += proc.memory_info().rss
            except psutil.NoSuchProcess:
                if proc is self._proc:
                    raise
        return cpu, rss

    def cpu_seconds(self) -> float | None:
        """Return the CPU time (user + system) the process has used so far, or ``None`` if
        it has exited."""
        try:
            return self._read()[0]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None

    def sample(self, *, percent: bool = True) -> Sample | None:
        """Return a new :class:`Sample`, or ``None`` if the process has exited; without
        ``percent``, its ``cpu_percent`` is None (an interval too short to say: psutil's CPU
        times move in 10 ms steps)."""
        if self.gone:
            return None
        try:
            cpu, rss = self._read()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            self.gone = True
            logger.debug("process %d is gone; stopped sampling it", self.pid)
            return None
        now = time.monotonic()
        cpu_percent = None
        if self._last is not None and percent:
            cpu_percent = round(cpu_percent_between(self._last[0], self._last[1], now, cpu), 1)
        self._last = (now, cpu)
        return Sample(round(now - self._origin, 3), cpu_percent, rss)


@dataclass(frozen=True)
class Sampling:
    """What a scenario run in one process samples: this process (the generator, ``"main"``)
    and, given its PID, the server; ``samplers`` for :func:`loadtest.engine.sample_loop`, the
    samples for :func:`loadtest.report.run_summary` (``server`` None without a PID)."""

    samplers: list[tuple[ProcessSampler, list[Sample]]]
    server: list[Sample] | None
    generator: dict[str, list[Sample]]

    @classmethod
    def of(cls, server_pid: int | None) -> Sampling:
        generator: dict[str, list[Sample]] = {"main": []}
        samplers = [(ProcessSampler(os.getpid()), generator["main"])]
        server: list[Sample] | None = None
        if server_pid is not None:
            server = []
            samplers.append((ProcessSampler(server_pid), server))
        return cls(samplers, server, generator)


def summarize(samples: Sequence[Sample], *, keep_series: bool = True) -> dict[str, Any]:
    """Summarise samples as ``{"cpu_percent": {"mean", "max"}, "rss_bytes": {...}, "series"}``.

    ``rss_bytes`` has ``start``, ``max`` and ``end``; values are ``None`` without samples.
    ``series`` (when kept) is a list of ``[t_s, cpu_percent, rss_bytes]`` for plotting.
    """
    cpus = [s.cpu_percent for s in samples if s.cpu_percent is not None]
    out: dict[str, Any] = {
        "cpu_percent": {
            "mean": round(sum(cpus) / len(cpus), 1) if cpus else None,
            "max": max(cpus) if cpus else None,
        },
        "rss_bytes": {
            "start": samples[0].rss_bytes if samples else None,
            "max": max(s.rss_bytes for s in samples) if samples else None,
            "end": samples[-1].rss_bytes if samples else None,
        },
    }
    if keep_series:
        out["series"] = [[s.t_s, s.cpu_percent, s.rss_bytes] for s in samples]
    return out


def is_generator_bound(cpu_percents: Sequence[float], *, cores: int | None = None) -> bool:
    """Return whether the generator's processes were saturated: any of them used at least
    :data:`GENERATOR_BOUND_PERCENT` of a core, or, given the ``cores`` they may run on,
    together at least that much of each (processes sharing one core can each stay below the
    bound while the core is full)."""
    if any(c >= GENERATOR_BOUND_PERCENT for c in cpu_percents):
        return True
    return cores is not None and sum(cpu_percents) >= GENERATOR_BOUND_PERCENT * cores


def usable_cores() -> int:
    """Return how many CPUs this process may run on (its affinity; worker processes inherit
    it), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
