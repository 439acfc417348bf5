"""``create_app(settings)``: the Quart-Trio app, and ``app``, the one ``hypercorn`` loads.

``hypercorn -k trio triorelay.app:app`` serves the module-level :data:`app`, built from the
``TRIORELAY_*`` environment at import. The app's lifespan runs the :class:`Relay` in the
lifespan nursery, so the hub's background work lives exactly as long as the app.
"""

from __future__ import annotations

import logging

import trio
from quart_trio import QuartTrio

from triorelay.compat import hypercorn as hypercorn_compat
from triorelay.errors import SettingsError
from triorelay.relay import Relay
from triorelay.routes.flows import FlowWebSockets
from triorelay.routes.http import FileResponse, blueprint
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
    relay = Relay(settings, handle_signals=handle_signals)
    app = QuartTrio(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_message_bytes
    app.extensions["triorelay"] = relay
    app.response_class = FileResponse
    app.register_blueprint(blueprint)
    app.asgi_app = FlowWebSockets(app.asgi_app, relay)  # type: ignore[method-assign, assignment, arg-type]
    run_scope = trio.CancelScope()

    @app.before_serving
    async def _start_relay() -> None:
        async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with run_scope:
                await relay.run(task_status=task_status)

        await app.nursery.start(run)

    @app.after_serving
    async def _stop_relay() -> None:
        relay.shutdown()
        run_scope.cancel()

    return app


def relay_of(app: QuartTrio) -> Relay:
    """The :class:`Relay` behind an app made by :func:`create_app`."""
    relay: Relay = app.extensions["triorelay"]
    return relay


def _app_from_environment() -> QuartTrio:
    """The app ``hypercorn`` loads; a bad setting stops the worker with a one-line reason."""
    try:
        return create_app()
    except SettingsError as error:
        raise SystemExit(f"triorelay: {error}") from None


app = _app_from_environment()
