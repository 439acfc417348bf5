"""The ``triorelay`` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import trio

from triorelay import __version__
from triorelay.errors import SettingsError
from triorelay.settings import load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="triorelay", description=__doc__)
    parser.add_argument("--version", action="version", version=f"triorelay {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the relay with Hypercorn (trio worker)")
    serve.add_argument("--host", help="address to bind (TRIORELAY_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind, 0 for any (TRIORELAY_PORT)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes (more than 1 needs a shared broker: TRIORELAY_BROKER=redis://...)",
    )
    serve.add_argument("--config", help="TOML settings file (TRIORELAY_CONFIG)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    overrides = {name: getattr(args, name) for name in ("host", "port")}
    try:
        settings = load_settings(
            args.config, **{k: v for k, v in overrides.items() if v is not None}
        )
        if args.workers < 1:
            raise SettingsError("--workers must be at least 1")
        if args.workers > 1 and not settings.shared_broker:
            raise SettingsError(
                "--workers: the memory broker keeps channels in one process, so only 1 worker "
                "is supported; set TRIORELAY_BROKER=redis://... to share channels between "
                "workers"
            )
    except SettingsError as error:
        print(f"triorelay: {error}", file=sys.stderr)  # noqa: T201
        return 2
    from triorelay.server import LOG_FORMAT, serve, serve_workers

    logging.basicConfig(level=settings.log_level, format=LOG_FORMAT)

    if args.workers > 1:
        if args.config:  # the workers read their settings as `hypercorn -w N` workers do
            os.environ["TRIORELAY_CONFIG"] = args.config
        return serve_workers(settings, args.workers)
    trio.run(serve, settings)
    return 0
