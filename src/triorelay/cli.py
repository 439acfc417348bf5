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
    token = commands.add_parser(
        "token",
        help="mint a token for development, signed with TRIORELAY_AUTH_HMAC_SECRET",
        description="Print a token signed with the configured HMAC secret. For development: "
        "in production, tokens come from your identity provider or application.",
    )
    token.add_argument("--sub", required=True, help="the token's subject (who it is for)")
    token.add_argument(
        "--publish", action="append", default=[], metavar="PATTERN", help="channels to publish"
    )
    token.add_argument(
        "--subscribe", action="append", default=[], metavar="PATTERN", help="channels to read"
    )
    token.add_argument(
        "--right",
        action="append",
        default=[],
        metavar="RIGHT",
        help="admin, upload, download, echo or proxy:<upstream> (repeat for several)",
    )
    token.add_argument("--ttl", type=float, default=3600.0, help="seconds until it expires")
    token.add_argument("--config", help="TOML settings file (TRIORELAY_CONFIG)")
    return parser


def _token(args: argparse.Namespace) -> int:
    """``triorelay token``: print a token with the rights asked for."""
    from triorelay.auth.grants import Grant, InvalidGrant
    from triorelay.auth.tokens import default_algorithms, mint

    settings = load_settings(args.config)
    if settings.auth_hmac_secret is None:
        raise SettingsError("triorelay token needs TRIORELAY_AUTH_HMAC_SECRET to sign with")
    channels: dict[str, list[str]] = {}
    for right, patterns in (("publish", args.publish), ("subscribe", args.subscribe)):
        for pattern in patterns:
            channels.setdefault(pattern, []).append(right)
    grant = {"channels": channels, "rights": args.right}
    try:
        Grant.parse(grant)
    except InvalidGrant as error:
        raise SettingsError(str(error)) from None
    print(  # noqa: T201 - the command's output
        mint(
            settings.auth_hmac_secret.get_secret_value(),
            args.sub,
            grant,
            ttl_seconds=args.ttl,
            audience=settings.auth_audience,
            issuer=settings.auth_issuer,
            algorithm=default_algorithms(settings)[0],
        )
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "token":
        try:
            return _token(args)
        except SettingsError as error:
            print(f"triorelay: {error}", file=sys.stderr)  # noqa: T201
            return 2
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
