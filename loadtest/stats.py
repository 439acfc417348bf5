"""Latency histograms, counters and delivery ledgers that merge across processes (I/O-free).

Latencies are recorded in microseconds in an HDR histogram (1 us to 60 s, 3 significant digits:
about 0.1 % value error), which keeps memory fixed (a few tens of kB) whatever the message count,
and can be encoded to a string, shipped from a worker process and added into the parent's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Final

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

LOWEST_US: Final = 1
HIGHEST_US: Final = 60_000_000
SIGNIFICANT_FIGURES: Final = 3

#: The percentiles reported, as (JSON key, percentile).
PERCENTILES: Final = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9))


class LatencyHistogram:
    """An HDR histogram of latencies in microseconds with out-of-range bookkeeping.

    Values below 1 us are recorded as 1 us; values above 60 s are recorded as 60 s and counted in
    :attr:`clamped_high`, so a run never loses a sample.
    """

    def __init__(self) -> None:
        self._hist = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)
        self.clamped_high = 0

    def record_ns(self, latency_ns: int) -> None:
        """Record one latency given in nanoseconds."""
        us = latency_ns // 1000
        if us < LOWEST_US:
            us = LOWEST_US
        elif us > HIGHEST_US:
            us = HIGHEST_US
            self.clamped_high += 1
        self._hist.record_value(us)

    @property
    def count(self) -> int:
        """The number of recorded samples."""
        return int(self._hist.get_total_count())

    def add(self, other: LatencyHistogram) -> None:
        """Add every sample of ``other`` into this histogram."""
        self._hist.add(other._hist)
        self.clamped_high += other.clamped_high

    def encode(self) -> str:
        """Return a compact (compressed, base64) text form for :meth:`decode`."""
        return str(self._hist.encode().decode("ascii"))

    @classmethod
    def decode(cls, text: str, clamped_high: int = 0) -> LatencyHistogram:
        """Rebuild a histogram from :meth:`encode` output; raises ``ValueError`` if corrupt."""
        new = cls()
        if text:
            try:
                new._hist.decode_and_add(text.encode("ascii"))
            except Exception as exc:  # hdrh raises assorted exceptions on bad input
                raise ValueError("corrupt encoded histogram") from exc
        new.clamped_high = clamped_high
        return new

    def summary_ms(self) -> dict[str, float | int | None]:
        """Return ``{"count", "p50", "p90", "p99", "p99_9", "max", "mean"}`` in milliseconds.

        Percentiles are ``None`` when nothing was recorded.
        """
        out: dict[str, float | int | None] = {"count": self.count}
        if self.count == 0:
            out.update({key: None for key, _ in PERCENTILES})
            out.update({"max": None, "mean": None})
            return out
        for key, pct in PERCENTILES:
            out[key] = self._hist.get_value_at_percentile(pct) / 1000.0
        out["max"] = self._hist.get_max_value() / 1000.0
        out["mean"] = round(self._hist.get_mean_value() / 1000.0, 3)
        return out


@dataclass
class Counters:
    """Message counters of one role, one process or a whole run; merge with :meth:`add`.

    * ``offered``: messages the schedule contained; ``sent``: handed to the socket;
    * ``acks``: echoes/acks the producers drained; ``delivered``: received by consumers;
    * ``errors``: connection or protocol failures; ``bad_frames``: frames that did not decode;
    * ``foreign``: well-formed messages of another run (left over in the server), ignored;
    * ``connected``/``failed_connects``: connection attempts that did or did not complete;
    * ``jobs_acked``: acks the acked consumers sent (``queue --ack explicit``),
      ``jobs_refused``: refusals the relay sent them, ``jobs_redelivered``: jobs they got on
      a second or later delivery.
    """

    offered: int = 0
    sent: int = 0
    acks: int = 0
    delivered: int = 0
    errors: int = 0
    bad_frames: int = 0
    foreign: int = 0
    connected: int = 0
    failed_connects: int = 0
    jobs_acked: int = 0
    jobs_refused: int = 0
    jobs_redelivered: int = 0

    def add(self, other: Counters) -> None:
        """Add ``other``'s counts into these."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_dict(self) -> dict[str, int]:
        """Return the counters as a plain dict (JSON-ready)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, int]) -> Counters:
        """Inverse of :meth:`to_dict`; unknown keys raise ``TypeError``."""
        return cls(**data)


@dataclass
class DeliveryLedger:
    """How many times each ``(producer, seq)`` was delivered, for duplicate/missing counts.

    One byte per sequence number per producer (saturating at 255): a 1M-message run costs 1 MB.
    """

    counts: dict[int, bytearray] = field(default_factory=dict)

    def record(self, producer: int, seq: int) -> None:
        """Count one delivery of message ``seq`` of ``producer``."""
        row = self.counts.get(producer)
        if row is None:
            row = self.counts[producer] = bytearray()
        if seq >= len(row):
            row.extend(bytes(max(seq + 1 - len(row), len(row))))
        if row[seq] < 255:
            row[seq] += 1

    def add(self, other: DeliveryLedger) -> None:
        """Add ``other``'s delivery counts into this ledger."""
        for producer, theirs in other.counts.items():
            row = self.counts.setdefault(producer, bytearray())
            if len(row) < len(theirs):
                row.extend(bytes(len(theirs) - len(row)))
            for seq, n in enumerate(theirs):
                if n:
                    row[seq] = min(255, row[seq] + n)

    def check(self, sent_per_producer: Mapping[int, int]) -> tuple[int, int]:
        """Return ``(duplicates, missing)`` given how many messages each producer sent.

        Producer ``p`` sent seqs ``0 .. sent_per_producer[p] - 1``; a seq delivered ``k > 1``
        times counts ``k - 1`` duplicates; a sent seq never delivered counts as missing.
        Deliveries of seqs that were never sent also count as duplicates (they cannot be new).
        """
        duplicates = missing = 0
        for producer in set(self.counts) | set(sent_per_producer):
            row = self.counts.get(producer, bytearray())
            sent = sent_per_producer.get(producer, 0)
            for seq in range(max(sent, len(row))):
                n = row[seq] if seq < len(row) else 0
                if seq < sent:
                    duplicates += max(0, n - 1)
                    missing += n == 0
                else:
                    duplicates += n
        return duplicates, missing

    def to_wire(self) -> dict[str, str]:
        """Return a JSON-ready form (hex rows keyed by producer index)."""
        return {str(p): row.hex() for p, row in self.counts.items()}

    @classmethod
    def from_wire(cls, data: Mapping[str, str]) -> DeliveryLedger:
        """Inverse of :meth:`to_wire`; raises ``ValueError`` on malformed input."""
        return cls({int(p): bytearray.fromhex(row) for p, row in data.items()})


@dataclass
class RoleStats:
    """Everything one process measured: counters, latency, optional ledger and per-consumer counts.

    ``latency`` is from each message's scheduled send time to its receipt; ``ack_latency``
    (acked consumers only) to the moment its ack was written; ``last_done_ns`` is the
    ``time.monotonic_ns()`` of the last delivery (of an acked consumer: of the last ack), 0
    before any. This is the unit shipped from worker processes (:meth:`to_wire`) and merged
    (:meth:`add`).
    """

    counters: Counters = field(default_factory=Counters)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    ack_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    ledger: DeliveryLedger | None = None
    sent_per_producer: dict[int, int] = field(default_factory=dict)
    per_consumer_delivered: list[int] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    cpu_percent: list[float] = field(default_factory=list)
    last_done_ns: int = 0

    MAX_ERROR_SAMPLES: ClassVar[int] = 20

    def note_error(self, message: str) -> None:
        """Count an error and keep its text if fewer than ``MAX_ERROR_SAMPLES`` are kept."""
        self.counters.errors += 1
        if len(self.error_samples) < self.MAX_ERROR_SAMPLES:
            self.error_samples.append(message)

    def add(self, other: RoleStats) -> None:
        """Merge ``other`` into these stats."""
        self.counters.add(other.counters)
        self.latency.add(other.latency)
        self.ack_latency.add(other.ack_latency)
        if other.ledger is not None:
            if self.ledger is None:
                self.ledger = DeliveryLedger()
            self.ledger.add(other.ledger)
        for p, n in other.sent_per_producer.items():
            self.sent_per_producer[p] = self.sent_per_producer.get(p, 0) + n
        self.per_consumer_delivered.extend(other.per_consumer_delivered)
        room = self.MAX_ERROR_SAMPLES - len(self.error_samples)
        self.error_samples.extend(other.error_samples[: max(0, room)])
        self.cpu_percent.extend(other.cpu_percent)
        self.last_done_ns = max(self.last_done_ns, other.last_done_ns)

    def to_wire(self) -> dict[str, Any]:
        """Return a JSON-ready form for :meth:`from_wire`."""
        return {
            "counters": self.counters.to_dict(),
            "latency_hdr": self.latency.encode(),
            "latency_clamped_high": self.latency.clamped_high,
            "ack_latency_hdr": self.ack_latency.encode(),
            "ack_latency_clamped_high": self.ack_latency.clamped_high,
            "ledger": None if self.ledger is None else self.ledger.to_wire(),
            "sent_per_producer": {str(p): n for p, n in self.sent_per_producer.items()},
            "per_consumer_delivered": self.per_consumer_delivered,
            "error_samples": self.error_samples,
            "cpu_percent": self.cpu_percent,
            "last_done_ns": self.last_done_ns,
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> RoleStats:
        """Inverse of :meth:`to_wire`; raises ``ValueError``/``KeyError``/``TypeError`` if bad."""
        ledger = data.get("ledger")
        return cls(
            counters=Counters.from_dict(data["counters"]),
            latency=LatencyHistogram.decode(data["latency_hdr"], data["latency_clamped_high"]),
            ack_latency=LatencyHistogram.decode(
                data["ack_latency_hdr"], data["ack_latency_clamped_high"]
            ),
            ledger=None if ledger is None else DeliveryLedger.from_wire(ledger),
            sent_per_producer={int(p): int(n) for p, n in data["sent_per_producer"].items()},
            per_consumer_delivered=[int(n) for n in data["per_consumer_delivered"]],
            error_samples=[str(e) for e in data["error_samples"]],
            cpu_percent=[float(c) for c in data["cpu_percent"]],
            last_done_ns=int(data["last_done_ns"]),
        )


def merge(parts: Iterable[RoleStats]) -> RoleStats:
    """Return a new :class:`RoleStats` holding the sum of ``parts``."""
    total = RoleStats()
    for part in parts:
        total.add(part)
    return total
