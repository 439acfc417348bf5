"""``create_app(settings)``: the Quart-Trio app, and ``app``, the one ``hypercorn`` loads.

``hypercorn -k trio triorelay.app:app`` serves the module-level :data:`app`. Importing it
builds nothing: at lifespan startup it reads the ``TRIORELAY_*`` environment, builds the relay
with :func:`create_app` (its broker, the Hypercorn hooks) and hands every event to it from then
on; a bad setting fails the startup with the reason, without a traceback. The app's lifespan
runs the :class:`Relay` in the lifespan nursery, so the hub's background work lives exactly
as long as the app.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

import trio
from quart_trio import QuartTrio

from triorelay.compat import hypercorn as hypercorn_compat
from triorelay.errors import SettingsError
from triorelay.lifecycle import pace_full_collections
from triorelay.observability.logs import configure_relay_logging
from triorelay.relay import Relay
from triorelay.routes.asgi import Message, Receive, Scope, Send
from triorelay.routes.dashboard import Dashboard
from triorelay.routes.events import EventStreams
from triorelay.routes.http import FileResponse, blueprint
from triorelay.routes.websocket import RelayWebSockets
from triorelay.settings import Settings, load_settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, handle_signals: bool = True) -> QuartTrio:
    """Build the relay app.

    ``handle_signals``: take SIGINT/SIGTERM in the app (what the ``hypercorn`` CLI needs);
    ``triorelay serve`` passes False and handles them itself.
    """
    settings = settings if settings is not None else load_settings()
    workers = hypercorn_compat.cli_worker_count()
    if workers > 1 and not settings.shared_broker:
        raise SettingsError(
            f"hypercorn -w {workers}: with the memory broker each worker would have channels of "
            "its own (a producer and a consumer on different workers would never meet); set "
            "TRIORELAY_BROKER=redis://... to share them, or run one worker"
        )
    hypercorn_compat.isolate_connection_errors()
    hypercorn_compat.use_app_queues()
    relay = Relay(settings, handle_signals=handle_signals, workers=workers)
    app = QuartTrio(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_message_bytes
    app.extensions["triorelay"] = relay
    app.response_class = FileResponse
    app.register_blueprint(blueprint)
    app.asgi_app = RelayWebSockets(  # type: ignore[method-assign, assignment]
        EventStreams(Dashboard(app.asgi_app, relay), relay),  # type: ignore[arg-type]
        relay,
    )
    run_scope = trio.CancelScope()
    restore_collector: list[Callable[[], None]] = []

    @app.before_serving
    async def _start_relay() -> None:
        async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with run_scope:
                await relay.run(task_status=task_status)

        await app.nursery.start(run)
        # Once the relay runs: a start that failed leaves the thresholds as they were.
        restore_collector.append(pace_full_collections(settings.gc_full_collection_threshold))

    @app.after_serving
    async def _stop_relay() -> None:
        relay.shutdown.begin("the app is stopping")
        try:
            # Every connection has ended: what their consumers gave back is queued. Write it
            # (bounded) before the broker stops, so that it comes back now, counted.
            await relay.hub.broker.flush()
        finally:
            run_scope.cancel()
            while restore_collector:
                restore_collector.pop()()

    return app


def relay_of(app: QuartTrio) -> Relay:
    """The :class:`Relay` behind an app made by :func:`create_app`."""
    relay: Relay = app.extensions["triorelay"]
    return relay


class DeferredApp:
    """The ASGI app ``hypercorn`` loads: it builds the relay app at lifespan startup.

    Hypercorn runs the lifespan before it serves (``hypercorn/trio/run.py: worker_serve``),
    so every request reaches the app built then. A server without lifespan support gets the
    app built on its first request instead.
    """

    def __init__(self) -> None:
        self._app: QuartTrio | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._app is not None:
            await self._app(scope, receive, send)  # type: ignore[arg-type]
            return
        if scope["type"] != "lifespan":
            self._app = _app_from_environment()
            await self._app(scope, receive, send)  # type: ignore[arg-type]
            return
        startup = await receive()
        try:
            self._app = _app_from_environment()
        except SystemExit as failure:
            _fail_startup(str(failure.code))
            await send({"type": "lifespan.startup.failed", "message": str(failure.code)})
            return
        replayed = False

        async def receive_startup_first() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return startup
            return await receive()

        await self._app(scope, receive_startup_first, send)  # type: ignore[arg-type]


def _fail_startup(reason: str) -> None:
    """Report a startup that cannot go on: the reason alone, once, on stderr.

    Hypercorn 0.18 turns ``lifespan.startup.failed`` into a traceback of its own (and its
    supervisor exits 0 all the same), so in one of its CLI worker processes this ends the
    process after printing the reason; elsewhere the server is told through the lifespan.
    """
    print(reason, file=sys.stderr)  # noqa: T201 - the server's own output
    if hypercorn_compat.cli_shutdown_event() is not None:
        sys.stderr.flush()
        os._exit(2)


def _app_from_environment() -> QuartTrio:
    """The relay app from the environment; a bad setting is a one-line :class:`SystemExit`.

    The relay's log lines follow ``log_format`` and ``log_level`` from here on, unless this
    process's logging is configured already (:func:`configure_relay_logging`).
    """
    try:
        settings = load_settings()
        configure_relay_logging(settings)
        return create_app(settings)
    except SettingsError as error:
        raise SystemExit(f"triorelay: {error}") from None


app = DeferredApp()
"""What ``hypercorn -k trio triorelay.app:app`` serves."""
