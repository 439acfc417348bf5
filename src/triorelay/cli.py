"""The ``triorelay`` command."""

from __future__ import annotations

import argparse
import base64
import codecs
import dataclasses
import io
import json
import os
import sys
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, cast

import trio

from triorelay import __version__
from triorelay.client import (
    Ack,
    ClientError,
    Event,
    Position,
    Reconnecting,
    Subscribed,
    Token,
    open_publisher,
    subscribe,
)
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
    sub = commands.add_parser(
        "sub",
        help="print a channel's messages, one per line, until Ctrl-C",
        description="Print each message of CHANNEL on a line of its own (text as it is, "
        "binary as its bytes; --json for one JSON object per line, binary in base64), with "
        "notices on stderr. Reconnects for ever, resuming after the last message printed.",
    )
    sub.add_argument("channel")
    _client_arguments(sub)
    sub.add_argument(
        "--since", type=_position, metavar="E:O", help="resume after this position (epoch:offset)"
    )
    sub.add_argument(
        "--recover",
        choices=("best_effort", "required"),
        default="best_effort",
        help="required: exit when a resume cannot be done without loss (default best_effort)",
    )
    pub = commands.add_parser(
        "pub",
        help="publish each line of stdin as a text message",
        description="Publish each line of stdin (without its line ending) on CHANNEL as a "
        "text message, in order; exit at end of input once every message is acknowledged. "
        "With --json, print each message's offset.",
    )
    pub.add_argument("channel")
    _client_arguments(pub)
    return parser


def _client_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--url", default="ws://127.0.0.1:8000", help="the relay (default ws://127.0.0.1:8000)"
    )
    command.add_argument("--json", action="store_true", help="one JSON object per line")
    tokens = command.add_mutually_exclusive_group()
    tokens.add_argument("--token", help="a token to present (visible to other local users)")
    tokens.add_argument(
        "--token-file", metavar="FILE", help="read the token from FILE, again at each reconnection"
    )


def _position(text: str) -> Position:
    try:
        return Position.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


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


def _token_of(args: argparse.Namespace) -> Token | None:
    """--token, or a provider reading --token-file at each connection (a rotated file is
    picked up by the next reconnection)."""
    if args.token_file is None:
        token: str | None = args.token
        return token
    path = Path(args.token_file)

    def read() -> str:
        return path.read_text().strip()

    read()  # a missing file is reported now, not at the first reconnection
    return read


def _write_json(item: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(item, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _notice(event: Event, as_json: bool) -> None:
    """A subscription's event: a JSON line on stdout with --json, else a line on stderr."""
    fields = {}
    for field in dataclasses.fields(event):
        value = getattr(event, field.name)
        fields[field.name] = str(value) if isinstance(value, Position) else value
    kind = type(event).__name__.lower()
    if as_json:
        _write_json({"notice": kind, **fields})
        return
    if isinstance(event, Subscribed):
        if event.recovering and not event.recovered:
            said = f"not recovered ({event.reason}): messages were lost"
        else:
            said = "recovered" if event.recovering else "live"
        text = f"subscribed to {event.channel} at {event.position}, {said}"
    elif isinstance(event, Reconnecting):
        ended = event.reason if event.code is None else f"closed: {event.code} {event.reason}"
        text = f"{ended}; reconnecting in {event.delay_seconds:.2f} s"
    else:
        text = f"{kind}: " + ", ".join(f"{name}={value}" for name, value in fields.items())
    print(f"triorelay: {text}", file=sys.stderr, flush=True)  # noqa: T201


async def _sub(args: argparse.Namespace) -> None:
    """``triorelay sub``: print every message until interrupted (or ended for good)."""
    as_json: bool = args.json
    async with subscribe(
        args.url,
        args.channel,
        since=args.since,
        recover=args.recover,
        token=_token_of(args),
        on_event=lambda event: _notice(event, as_json),
    ) as subscription:
        async for message in subscription:
            payload = message.payload
            if as_json:
                binary = isinstance(payload, bytes)
                _write_json(
                    {
                        "channel": message.channel,
                        "position": str(message.position),
                        "payload": base64.b64encode(payload).decode()
                        if isinstance(payload, bytes)
                        else payload,
                        "binary": binary,
                    }
                )
            elif isinstance(payload, bytes):
                sys.stdout.flush()
                sys.stdout.buffer.write(payload + b"\n")
                sys.stdout.buffer.flush()
            else:
                sys.stdout.write(payload + "\n")
                sys.stdout.flush()


async def _stdin_lines() -> AsyncIterator[str]:
    """stdin's lines, without their endings (UTF-8), as they come: a chunk per thread hop,
    so that a terminal's line goes out at once and a pipe's lines go in batches."""
    read1 = cast(io.BufferedReader, sys.stdin.buffer).read1
    decoder = codecs.getincrementaldecoder("utf-8")()
    rest = ""
    # abandon_on_cancel: Ctrl-C while a terminal has no line for us ends the command at once.
    while chunk := await trio.to_thread.run_sync(read1, 65536, abandon_on_cancel=True):
        *lines, rest = (rest + decoder.decode(chunk)).split("\n")
        for line in lines:
            yield line.removesuffix("\r")
    rest += decoder.decode(b"", final=True)
    if rest:
        yield rest.removesuffix("\r")


async def _pub(args: argparse.Namespace) -> None:
    """``triorelay pub``: publish stdin's lines, pipelined; wait for every ack."""
    as_json: bool = args.json
    channel: str = args.channel

    def report(offset: int) -> None:
        if as_json:
            _write_json({"channel": channel, "offset": offset})

    async with open_publisher(args.url, channel, token=_token_of(args)) as publisher:
        pending: deque[Ack] = deque()
        async for line in _stdin_lines():
            pending.append(await publisher.send(line))
            while pending and pending[0].done:
                report(await pending.popleft().wait())
        while pending:
            report(await pending.popleft().wait())


def _run_client(command: Callable[[argparse.Namespace], Awaitable[None]], args: Any) -> int:
    """Run ``sub`` or ``pub``: 0 when done, 1 when the relay (or stdin) said no, 130 on Ctrl-C."""
    try:
        trio.run(command, args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (``| head``): stop quietly, and keep Python from
        # complaining again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except (ClientError, OSError, UnicodeDecodeError) as error:
        print(f"triorelay: {error}", file=sys.stderr)  # noqa: T201
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    if args.command in ("sub", "pub"):
        try:
            return _run_client(_sub if args.command == "sub" else _pub, args)
        except ValueError as error:  # a bad --url
            print(f"triorelay: {error}", file=sys.stderr)  # noqa: T201
            return 2
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
    from triorelay.observability.logs import configure_logging
    from triorelay.server import serve, serve_workers

    configure_logging(settings)

    if args.workers > 1:
        if args.config:  # the workers read their settings as `hypercorn -w N` workers do
            os.environ["TRIORELAY_CONFIG"] = args.config
        return serve_workers(settings, args.workers)
    trio.run(serve, settings)
    return 0
