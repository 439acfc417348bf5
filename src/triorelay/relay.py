"""The composition root: what one relay process shares between its connections.

:class:`Relay` is built at the app's lifespan startup (:mod:`triorelay.app`) and runs for the
app's lifetime in the lifespan nursery (:meth:`Relay.run`). It owns:

- the :class:`~triorelay.hub.Hub` and its broker;
- the :class:`~triorelay.lifecycle.CloseReaper`, which bounds every close the relay starts,
  and :class:`~triorelay.lifecycle.Liveness`, which closes dead peers;
- the :class:`~triorelay.uploads.UploadStore` of ``/ws`` files and ``/ws/upload``;
- access control: :class:`~triorelay.auth.access.Access` and the connection limits;
- the :class:`~triorelay.lifecycle.Shutdown`, and what starts it: signals (when the relay
  runs under the ``hypercorn`` CLI, not under ``triorelay serve``, which handles them itself)
  and the CLI supervisor's stop event;
- what ``GET /metrics`` reads, and under several workers the snapshots that let any worker
  answer for all of them (:mod:`triorelay.observability.workers`).
"""

from __future__ import annotations

import logging
import os

import trio

from triorelay.auth.access import Access
from triorelay.auth.limits import ClientRates, ConnectionLimits
from triorelay.auth.redaction import redact_logs
from triorelay.brokers import broker_factory
from triorelay.compat import hypercorn as hypercorn_compat
from triorelay.hub import Hub
from triorelay.lifecycle import CloseReaper, Liveness, Shutdown, watch_signals, watch_supervisor
from triorelay.lifecycle.supervisor import Supervisor
from triorelay.observability.counters import RelayCounters
from triorelay.observability.metrics import Sources, registry_for
from triorelay.observability.workers import (
    STALE_INTERVALS,
    SnapshotDirectory,
    WorkerMetrics,
    default_directory,
    snapshot_max_bytes,
)
from triorelay.settings import Settings
from triorelay.uploads import UploadStore

log = logging.getLogger(__name__)


class Relay:
    """Everything one relay process shares between its connections."""

    def __init__(
        self, settings: Settings, *, handle_signals: bool = True, workers: int = 0
    ) -> None:
        """``workers``: how many worker processes serve with this one (Hypercorn's CLI).

        Raises :class:`~triorelay.errors.SettingsError` when several workers cannot share
        their metrics (``metrics_snapshot_dir`` unusable).
        """
        self.settings = settings
        self.hub = Hub(settings, broker_factory(settings))
        self.reaper = CloseReaper(settings.close_timeout_seconds)
        self.liveness = Liveness(settings.ping_interval_seconds, settings.ping_timeout_seconds)
        self.uploads = UploadStore(
            settings.upload_dir, settings.max_upload_bytes, settings.upload_quota_bytes
        )
        #: Who may do what, and how many connections each client may hold.
        self.access = Access(settings)
        self.limits = ConnectionLimits(
            settings.max_connections, settings.max_connections_per_client
        )
        #: HTTP publishes' rate per client (a WebSocket producer's is its connection's).
        self.http_publish_rates = ClientRates(
            settings.publish_rate_messages_per_second,
            settings.publish_rate_bytes_per_second,
            settings.max_connections,
        )
        redact_logs(settings.auth_query_parameter)
        #: The one way to shut the relay down: ``relay.shutdown.begin()``.
        self.shutdown = Shutdown(self.hub)
        #: Restarts a background task that fails; ``/healthz`` reports one that is down.
        self.supervisor = Supervisor()
        #: Per-connection and per-refusal counts (never per message), for the metrics.
        self.counters = RelayCounters()
        #: What the metrics and the dashboard read.
        self.sources = Sources(
            settings, self.hub, self.limits, self.supervisor, self.uploads, self.counters
        )
        #: What ``GET /metrics`` exposes, read from the statistics at each scrape.
        self.metrics = registry_for(self.sources)
        #: Under several workers: this worker's metrics for the others' scrapes, and theirs
        #: for its own (None in a single process: ``metrics`` answers alone).
        self.worker_metrics = self._worker_metrics() if workers > 1 else None
        self.handle_signals = handle_signals

    def _worker_metrics(self) -> WorkerMetrics:
        settings = self.settings
        directory = SnapshotDirectory(
            settings.metrics_snapshot_dir or default_directory(),
            master=os.getppid(),
            worker=os.getpid(),
            stale_seconds=STALE_INTERVALS * settings.metrics_snapshot_seconds,
            max_bytes=snapshot_max_bytes(settings.metrics_max_namespaces),
        )
        directory.prepare()
        return WorkerMetrics(self.metrics, directory, settings.metrics_snapshot_seconds)

    def health(self) -> str:
        """``ok``, or why the relay cannot serve now (``/healthz`` answers 503 with it)."""
        if self.shutdown.begun:
            return "shutting down"
        if not self.hub.broker.ready:
            return "broker unavailable"
        if not self.supervisor.healthy:
            return "a relay task is restarting"
        return "ok"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the relay's background work until cancelled.

        On the way out, any connection still open has its socket dropped: a task stuck in one
        of Hypercorn's shielded sends would otherwise outlive the app.
        """
        try:
            await self._run(task_status=task_status)
        finally:
            self.reaper.abort_all()

    async def _run(self, *, task_status: trio.TaskStatus[None]) -> None:
        log.info("access: %s", self.access.describe())
        await self._sweep_uploads()
        async with trio.open_nursery() as nursery:
            supervise = self.supervisor.run
            await nursery.start(supervise, "broker", self.hub.broker.run)
            await nursery.start(supervise, "close reaper", self.reaper.run)
            await nursery.start(supervise, "liveness", self.liveness.run)
            await nursery.start(supervise, "upload sweep", self._sweep_uploads_forever)
            if self.worker_metrics is not None:
                await nursery.start(supervise, "metrics snapshots", self.worker_metrics.run)
            if self.handle_signals:
                await nursery.start(watch_signals, self.shutdown)
            event = hypercorn_compat.cli_shutdown_event()
            if event is not None:
                nursery.start_soon(watch_supervisor, self.shutdown, event)
            task_status.started()

    async def _sweep_uploads_forever(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.settings.upload_sweep_seconds)
            await self._sweep_uploads()

    async def _sweep_uploads(self) -> None:
        """Remove expired stored files and the partial uploads a relay that died left behind,
        and recount the directory (the first time before serving)."""
        settings = self.settings
        try:
            swept = await self.uploads.sweep_and_recount(
                ttl_seconds=settings.upload_ttl_seconds,
                stale_seconds=settings.stale_upload_seconds,
            )
        except OSError as error:
            log.warning("could not sweep the uploads in %s: %s", self.uploads.directory, error)
            return
        if swept.expired or swept.stale:
            log.info(
                "removed %d expired uploads and %d partial uploads older than %.0f s",
                swept.expired,
                swept.stale,
                settings.stale_upload_seconds,
            )
