"""``serve(settings)``: run the relay on Hypercorn's trio worker, with signal handling.

On SIGINT or SIGTERM the relay stops accepting, closes every WebSocket with 1001 and a reason,
and returns once every connection has ended or ``graceful_timeout_seconds`` has passed,
whichever comes first. A second signal does not hurry it: the deadline already bounds it.
"""

from __future__ import annotations

import logging

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from quart_trio import QuartTrio

from triorelay.app import create_app, relay_of
from triorelay.lifecycle import watch_signals
from triorelay.observability.logs import logging_config
from triorelay.settings import Settings

log = logging.getLogger(__name__)


def hypercorn_config(settings: Settings) -> Config:
    """The Hypercorn configuration for ``settings``."""
    config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.graceful_timeout = settings.graceful_timeout_seconds
    # Hypercorn's own bound on a message; the relay's WebSocket paths replace it with a stricter
    # one, checked before buffering (triorelay.compat.message_limits), under either launcher.
    config.websocket_max_message_size = settings.max_message_bytes
    # The relay pings, and closes peers that do not answer (triorelay.lifecycle.Liveness).
    config.websocket_ping_interval = None
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


def serve_workers(settings: Settings, workers: int) -> int:
    """Serve with ``workers`` processes under Hypercorn's supervisor; return its exit status.

    Each worker imports ``triorelay.app:app``, so it reads its settings from the environment
    (and ``TRIORELAY_CONFIG``) as under ``hypercorn -w N``, and shuts down the same way. Only
    useful with a shared broker: with ``memory`` each worker would have channels of its own.
    """
    from hypercorn.run import run

    config = hypercorn_config(settings)
    # Worker processes start with logging unconfigured: Hypercorn applies this dict in each
    # (the master's own, in the format the master was configured with).
    config.logconfig_dict = logging_config(settings)
    config.application_path = "triorelay.app:app"
    config.worker_class = "trio"
    config.workers = workers
    return run(config)


async def serve(
    settings: Settings,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    shutdown_trigger: trio.Event | None = None,
    app: QuartTrio | None = None,
) -> None:
    """Serve until SIGINT, SIGTERM, or ``shutdown_trigger`` is set; then shut down cleanly.

    ``task_status.started()`` receives the bound addresses (``["http://127.0.0.1:PORT"]``),
    so ``await nursery.start(serve, settings_with_port_0)`` gives the real port. ``app``
    defaults to ``create_app(settings, handle_signals=False)``.
    """
    if app is None:
        app = create_app(settings, handle_signals=False)
    shutdown = relay_of(app).shutdown

    async def stop_when_triggered(trigger: trio.Event) -> None:
        await trigger.wait()
        shutdown.begin("asked to stop")

    async with trio.open_nursery() as nursery:

        async def run_hypercorn(*, task_status: trio.TaskStatus[list[str]]) -> None:
            # Hypercorn stops accepting once the relay's shutdown has begun.
            await hypercorn_serve(
                app,
                hypercorn_config(settings),
                shutdown_trigger=shutdown.wait,
                task_status=task_status,
            )
            # Hypercorn returned: every connection has ended. Stop watching signals.
            nursery.cancel_scope.cancel()

        await nursery.start(watch_signals, shutdown)
        if shutdown_trigger is not None:
            nursery.start_soon(stop_when_triggered, shutdown_trigger)
        binds = await nursery.start(run_hypercorn)
        for bind in binds:
            log.info("triorelay: Running on %s", bind)
        task_status.started(binds)
