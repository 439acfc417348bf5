"""Typed settings, read from ``TRIORELAY_*`` environment variables and an optional TOML file.

Precedence, highest first: keyword arguments, environment variables, the TOML file
(``TRIORELAY_CONFIG`` or ``triorelay serve --config``), the defaults below. Every value is
validated at start-up; :func:`load_settings` turns all problems into one :class:`SettingsError`
that names each bad setting.

Units are in the names (``*_bytes``, ``*_seconds``, ``*_messages``).
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AnyUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    UrlConstraints,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from triorelay.auth.grants import Grant
from triorelay.auth.origins import parse_origin_patterns
from triorelay.errors import SettingsError

Mode = Literal["broadcast", "queue"]
AckMode = Literal["auto", "explicit"]
"""Queue channels: ``auto``, a job is done once written to a consumer's socket; ``explicit``,
a framed consumer acks each one (``docs/topics/queue-delivery.md``)."""
Policy = Literal["disconnect", "drop_oldest", "drop_newest", "block"]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
JobSeconds = Annotated[float, Field(gt=0, le=86_400)]
"""An acked queue's times: at most a day (a nack's delay is bounded the same way)."""
UpstreamName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
"""A proxy upstream's name: what ``/ws/proxy/{name}`` says, never a URL."""
WebSocketUrl = Annotated[
    AnyUrl, UrlConstraints(allowed_schemes=["ws", "wss"], host_required=True, max_length=2083)
]

ALGORITHMS = frozenset(
    {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    | {"ES256", "ES384", "ES512", "EdDSA"}
)
"""JWT algorithms a relay can be set to accept (``none`` is never one)."""

MIN_HMAC_SECRET_BYTES = 32
"""The shortest HMAC secret accepted: a shorter one can be guessed offline from any token."""

_CHANNEL_NAME = re.compile(r"[A-Za-z0-9._:-]{1,128}")

_config_file: ContextVar[Path | None] = ContextVar("_config_file", default=None)


class ChannelRule(BaseModel):
    """Overrides for the channels whose names match one glob pattern of ``channels``.

    Any field left out falls back to the global setting of the same name.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode | None = None
    slow_consumer_policy: Policy | None = None
    consumer_buffer_messages: PositiveInt | None = None
    consumer_buffer_bytes: PositiveInt | None = None
    queue_buffer_messages: PositiveInt | None = None
    history_messages: NonNegativeInt | None = None
    history_bytes: PositiveInt | None = None
    history_ttl_seconds: Annotated[float, Field(gt=0)] | None = None
    ack: AckMode | None = None
    max_in_flight: PositiveInt | None = None
    ack_timeout_seconds: JobSeconds | None = None
    max_deliveries: PositiveInt | None = None
    dead_letter_channel: str | None = None
    redelivery_backoff_seconds: Annotated[float, Field(ge=0, le=86_400)] | None = None
    redelivery_backoff_max_seconds: Annotated[float, Field(ge=0, le=86_400)] | None = None


class ChannelConfig(BaseModel):
    """The resolved, complete configuration of one channel."""

    model_config = ConfigDict(frozen=True)

    mode: Mode
    slow_consumer_policy: Policy
    consumer_buffer_messages: int
    consumer_buffer_bytes: int
    queue_buffer_messages: int
    block_timeout_seconds: float = 30.0
    history_messages: int = 0
    history_bytes: int = 1
    history_ttl_seconds: float = 1.0
    ack: AckMode = "auto"
    max_in_flight: int = 16
    ack_timeout_seconds: float = 30.0
    max_deliveries: int = 5
    #: Where jobs that used up their deliveries go; ``None``: ``<channel>.dead``.
    dead_letter_channel: str | None = None
    redelivery_backoff_seconds: float = 1.0
    redelivery_backoff_max_seconds: float = 60.0

    @property
    def acked(self) -> bool:
        """True for a queue channel whose framed consumers ack each job."""
        return self.mode == "queue" and self.ack == "explicit"

    def dead_letter_of(self, channel: str) -> str:
        """The channel a job of ``channel`` goes to once it used up its deliveries."""
        return self.dead_letter_channel or f"{channel}.dead"

    def redelivery_delay(self, deliveries: int) -> float:
        """How long a job handed out ``deliveries`` times waits before it is handed out
        again: the backoff, doubled per delivery after the first, at most the cap."""
        base = self.redelivery_backoff_seconds
        if base <= 0 or deliveries <= 0:
            return 0.0
        return float(min(base * 2 ** min(deliveries - 1, 62), self.redelivery_backoff_max_seconds))

    @property
    def keeps_history(self) -> bool:
        """True when the channel's messages are kept for resuming consumers (broadcast only)."""
        return self.mode == "broadcast" and self.history_messages > 0


class Settings(BaseSettings):
    """Every setting of the relay. See README "Settings" for the memory arithmetic."""

    model_config = SettingsConfigDict(
        env_prefix="TRIORELAY_", extra="forbid", frozen=True, validate_default=True
    )

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000

    #: Delivery mode of channels no rule matches.
    mode: Mode = "broadcast"
    #: What happens to a broadcast consumer whose buffer is full.
    slow_consumer_policy: Policy = "disconnect"
    #: Per-consumer buffer, in bytes first (as Centrifugo's client queue), with a message cap
    #: high enough that small messages never reach it before the bytes do.
    consumer_buffer_messages: PositiveInt = 16_384
    consumer_buffer_bytes: PositiveInt = 1024 * 1024
    #: Policy ``block``: a consumer that keeps a publish waiting this long for room is closed
    #: with 1013 (the message then goes on to the others), so one stalled consumer cannot
    #: freeze its channel. Queue channels: a producer waits this long at most for room.
    block_timeout_seconds: Annotated[float, Field(gt=0)] = 30.0
    #: Queue-mode channels: messages waiting for a consumer, before producers are backpressured.
    queue_buffer_messages: PositiveInt = 1024
    #: Queue channels with ``ack = "explicit"`` (docs/topics/queue-delivery.md): jobs a
    #: framed consumer holds unacknowledged at most (the relay sends it no more until it
    #: acks one), how long it may hold one before it goes to another consumer, how many
    #: times a job is handed out before it goes to the dead-letter channel
    #: (``dead_letter_channel``, default ``<channel>.dead``), and the wait before a job that
    #: came back is handed out again (doubling per delivery, up to the cap). Settable per
    #: rule; ``ack`` applies to queue channels only.
    ack: AckMode = "auto"
    max_in_flight: PositiveInt = 16
    ack_timeout_seconds: JobSeconds = 30.0
    max_deliveries: PositiveInt = 5
    redelivery_backoff_seconds: Annotated[float, Field(ge=0, le=86_400)] = 1.0
    redelivery_backoff_max_seconds: Annotated[float, Field(ge=0, le=86_400)] = 60.0
    #: Memory broker: bytes queued in every queue channel together; past it publishing to a
    #: queue waits, as with a full queue.
    max_queued_bytes: PositiveInt = 256 * 1024 * 1024
    #: Largest message accepted, over WebSocket or HTTP. Text counts its UTF-8 bytes.
    max_message_bytes: PositiveInt = 1024 * 1024
    #: Accept permessage-deflate when a client offers it. Off by default: Hypercorn inflates a
    #: message before checking its size, so a small compressed frame can take a lot of memory.
    compression: bool = False
    #: Most channels alive at once; past it new channels are refused (503 / close 1013).
    max_channels: PositiveInt = 100_000
    #: History per broadcast channel, for consumers that resume (docs/topics/delivery.md):
    #: the last ``history_messages`` messages (0: no history) and at most ``history_bytes``
    #: of them, for ``history_ttl_seconds`` after the channel's last publish.
    history_messages: NonNegativeInt = 1000
    history_bytes: PositiveInt = 1024 * 1024
    history_ttl_seconds: Annotated[float, Field(gt=0)] = 300.0
    #: Memory broker: bytes every channel's history holds together (payloads plus about
    #: 100 bytes per message and 1 KiB per channel); past it the histories published to
    #: least recently lose their oldest messages first.
    history_max_bytes: PositiveInt = 64 * 1024 * 1024
    #: How long a channel's position (its epoch and last offset) outlives its last publish,
    #: so that a consumer coming back after its history expired is told "expired", not
    #: "epoch". Memory broker: also held within ``history_max_bytes``.
    history_meta_ttl_seconds: Annotated[float, Field(gt=0)] = 24 * 3600.0
    #: A resume that would replay more messages than this is not done (reason ``too_many``).
    recovery_max_messages: PositiveInt = 10_000
    #: ``GET /channels/{c}/events``: a comment line this often keeps proxies from closing an
    #: idle event stream.
    sse_keepalive_seconds: Annotated[float, Field(gt=0)] = 15.0
    #: ``GET /channels/{c}/events``: how long a browser waits before reconnecting (``retry:``).
    sse_retry_milliseconds: Annotated[int, Field(ge=0)] = 500
    #: Per-channel overrides: glob pattern -> rule. The first matching pattern wins.
    channels: dict[str, ChannelRule] = Field(default_factory=dict)

    #: On SIGINT/SIGTERM: the deadline for every connection to end, after which they are cut.
    graceful_timeout_seconds: Annotated[float, Field(gt=0)] = 2.0
    #: How long a close the relay starts may take before the socket is dropped.
    close_timeout_seconds: Annotated[float, Field(gt=0)] = 1.0
    #: TCP_USER_TIMEOUT on every WebSocket: the kernel fails a send whose data stays
    #: unacknowledged this long, freeing sockets whose peer vanished or stopped reading.
    tcp_user_timeout_seconds: Annotated[float, Field(gt=0)] | None = 30.0
    #: CPython's third garbage-collection threshold while the relay serves: the oldest
    #: generation (every object of the process) is collected at most once per this many
    #: collections of the middle one (Python's default: 10); ``None`` leaves the interpreter's
    #: thresholds alone (:mod:`triorelay.lifecycle.collector`). A closed WebSocket read by the
    #: relay's own worker leaves no cyclic garbage to wait for it.
    gc_full_collection_threshold: Annotated[int, Field(ge=1, le=1_000_000)] | None = 1000
    #: WebSocket pings to every client; ``None`` disables them.
    ping_interval_seconds: Annotated[float, Field(gt=0)] | None = 20.0
    ping_timeout_seconds: Annotated[float, Field(gt=0)] = 20.0

    #: Where uploads are stored, under server-generated names (created on the first upload).
    upload_dir: Path = Path("./uploads")
    #: Largest upload (``/ws`` file flow, ``/ws/upload``); past it the partial file is removed
    #: and the connection closed with 1009.
    max_upload_bytes: PositiveInt = 1024 * 1024 * 1024
    #: Partial uploads not written to for this long are removed by the sweep (a relay died
    #: mid-upload); more recent ones may belong to another relay sharing the directory.
    stale_upload_seconds: Annotated[float, Field(gt=0)] = 3600.0
    #: Most bytes the upload directory holds (stored files and uploads in progress); past
    #: it an upload is closed with 1013 ``upload storage full`` and its partial file removed.
    upload_quota_bytes: PositiveInt = 10 * 1024**3
    #: Stored files are removed this long after they were uploaded.
    upload_ttl_seconds: Annotated[float, Field(gt=0)] = 7 * 24 * 3600.0
    #: How often the sweep removes expired and stale files, and recounts the directory.
    upload_sweep_seconds: Annotated[float, Field(gt=0)] = 60.0
    #: An HTTP publish waiting for room (a full queue, a ``block`` channel) longer than this
    #: is answered 503, and nothing is published.
    publish_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    #: Messages held per direction on ``/ws``, ``/ws/upload`` and ``/ws/proxy`` connections
    #: between the socket and the handler (or the upstream); past it the sender waits.
    flow_buffer_messages: PositiveInt = 4
    #: The only upstreams the proxy dials: name -> ``ws://`` or ``wss://`` URL.
    proxy_upstreams: dict[UpstreamName, WebSocketUrl] = Field(default_factory=dict)
    #: Dialling an upstream (TCP, TLS, handshake) past this closes the client with 1014.
    proxy_connect_timeout_seconds: Annotated[float, Field(gt=0)] = 5.0

    #: Where messages travel between relays: ``memory`` (this process only) or a Redis URL,
    #: ``redis://host:port/db`` or ``rediss://...``, shared by every relay process that uses it.
    broker: str = "memory"
    #: Redis broker: prefix of every key the relay uses (several relays can share one Redis).
    redis_key_prefix: str = "triorelay:"
    #: Redis broker: messages kept per channel stream (approximate ``MAXLEN``). A relay that
    #: falls further behind than this, or reconnects after more were published, reports a gap.
    redis_stream_max_messages: PositiveInt = 10_000
    #: Redis broker: a channel's stream expires after this long without a publish (up to a
    #: second more: publishes renew its expiry at most once a second).
    redis_stream_ttl_seconds: Annotated[float, Field(gt=0)] = 3600.0
    #: Redis broker: most messages read per stream in one round trip.
    redis_read_batch_messages: PositiveInt = 256
    #: Redis broker, queue mode: a message taken by a consumer and not acknowledged for this
    #: long (its relay died) is given to another consumer.
    redis_claim_idle_seconds: Annotated[float, Field(gt=0)] = 30.0
    #: Redis broker, queue mode: most queue consumers of this relay waiting in a blocking read
    #: at once, each holding a Redis connection of its own; past it a consumer waits (in
    #: turn, and staying connected) for one of them to return before it reads.
    redis_max_blocking_connections: PositiveInt = 1024
    #: Redis broker: how long a publish, or a consumer's subscription, may wait for Redis
    #: before the client gets an error (close 1013 / HTTP 503).
    broker_timeout_seconds: Annotated[float, Field(gt=0)] = 5.0
    #: Redis broker: reconnection backoff doubles from 0.05 s up to this cap, and resets after
    #: a successful connection.
    broker_reconnect_max_seconds: Annotated[float, Field(gt=0)] = 5.0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: Log lines on stderr: ``text`` (``<time> <LEVEL> <logger>: <message>``) or ``json``, one
    #: object per line with the access log's fields as keys.
    log_format: Literal["text", "json"] = "text"
    #: One message in this many of each producer is traced through its stages, for the
    #: latency histograms (``GET /metrics``, channel statistics); 0: none.
    latency_sample_messages: NonNegativeInt = 64
    #: ``GET /metrics`` labels channels by namespace: the name up to this separator.
    metrics_namespace_separator: str = "."
    #: Most namespaces labelled per scrape; past it channels count under "other".
    metrics_max_namespaces: PositiveInt = 100
    #: ``--workers N`` / ``hypercorn -w N``: each worker writes its metrics this often to a
    #: file of its own, which any worker answering ``GET /metrics`` reads; a file three times
    #: older than this is a dead worker's, left out and removed.
    metrics_snapshot_seconds: Annotated[float, Field(gt=0)] = 5.0
    #: Where those files go (one per worker); default: ``triorelay-metrics-<uid>`` in the
    #: system's temporary directory. Created with mode 0700; it must belong to this user and
    #: be writable by no one else.
    metrics_snapshot_dir: Path | None = None
    #: ``GET /dashboard/feed``: one snapshot this often, of the busiest
    #: ``dashboard_max_channels`` channels at most.
    dashboard_interval_seconds: Annotated[float, Field(ge=0.1, le=60)] = 1.0
    dashboard_max_channels: Annotated[int, Field(gt=0, le=1000)] = 20

    # -- access control (docs/how-to/secure-a-relay.md) --
    #: HMAC secret that signs tokens (HS256/384/512). Any key setting turns tokens on.
    auth_hmac_secret: SecretStr | None = None
    #: PEM file of the public key that verifies tokens (RS*, PS*, ES*, EdDSA).
    auth_public_key_file: Path | None = None
    #: JWKS document, a file path or an ``https://`` URL; refetched on an unknown ``kid``.
    auth_jwks_url: str | None = None
    #: Fetching the JWKS: time limit, keys kept from a JWKS file (a URL's set is its
    #: issuer's, kept whole), and how long a fetched set is trusted (a key removed from it is
    #: refused once it is fetched again).
    auth_jwks_timeout_seconds: Annotated[float, Field(gt=0)] = 5.0
    auth_jwks_max_keys: PositiveInt = 16
    auth_jwks_lifespan_seconds: Annotated[float, Field(gt=0)] = 300.0
    #: Algorithms accepted (never taken from the token); default: HS256 with an HMAC secret,
    #: RS256 and ES256 with a public key or JWKS.
    auth_algorithms: list[str] = Field(default_factory=list)
    #: When set, a token's ``aud`` / ``iss`` must match.
    auth_audience: str | None = None
    auth_issuer: str | None = None
    #: Clock skew tolerated on ``exp`` and ``nbf``.
    auth_leeway_seconds: Annotated[float, Field(ge=0, le=300)] = 5.0
    #: Where browsers put their token: the query parameter (redacted from logs), and a cookie.
    auth_query_parameter: str = "token"
    auth_cookie_name: str | None = None
    #: With tokens on: what a client without a token may do (same shape as a token's claim).
    auth_anonymous: dict[str, Any] = Field(default_factory=dict)
    #: Without any key: serve anonymous clients from non-loopback addresses too.
    allow_anonymous: bool = False
    #: Origins a browser page may connect from besides the relay's own (same origin), exact
    #: (``https://app.example.com``) or ``https://*.example.com``.
    allowed_origins: list[str] = Field(default_factory=list)
    #: WebSocket connections at once, in all and per client (token ``sub``, else address).
    max_connections: PositiveInt = 50_000
    max_connections_per_client: PositiveInt = 5_000
    #: A producer connection's publish rate (a token bucket holding one second's worth, so at
    #: least one message, and one of ``max_message_bytes``, must fit: such a message could
    #: never be published otherwise); past it the producer is closed with 1008. HTTP
    #: publishes count per client (token ``sub``, else address): past it 429.
    publish_rate_messages_per_second: Annotated[float, Field(ge=1)] = 100_000.0
    publish_rate_bytes_per_second: Annotated[float, Field(gt=0)] = 256.0 * 1024 * 1024

    @functools.cached_property
    def _configs(self) -> dict[str | None, ChannelConfig]:
        """Each rule's resolved configuration (None: the defaults'), made when first asked.

        In the instance's ``__dict__``, not a pydantic private attribute: reading one of those
        goes through ``BaseModel.__getattr__`` (4-7 µs here), and every connection asks.
        """
        return {}

    @model_validator(mode="after")
    def _check_buffers_fit_a_message(self) -> Settings:
        smallest = min(
            [self.consumer_buffer_bytes]
            + [
                rule.consumer_buffer_bytes
                for rule in self.channels.values()
                if rule.consumer_buffer_bytes is not None
            ]
        )
        if smallest < self.max_message_bytes:
            raise ValueError(
                f"consumer_buffer_bytes ({smallest}) must be at least max_message_bytes "
                f"({self.max_message_bytes}), or a largest message could never be delivered"
            )
        if self.max_queued_bytes < self.max_message_bytes:
            raise ValueError(
                f"max_queued_bytes ({self.max_queued_bytes}) must be at least max_message_bytes "
                f"({self.max_message_bytes})"
            )
        if self.publish_rate_bytes_per_second < self.max_message_bytes:
            raise ValueError(
                f"publish_rate_bytes_per_second ({self.publish_rate_bytes_per_second:.0f}) must "
                f"be at least max_message_bytes ({self.max_message_bytes}): the rate's bucket "
                "holds one second's worth, so a largest message could never be published"
            )
        if self.close_timeout_seconds >= self.graceful_timeout_seconds:
            raise ValueError(
                f"close_timeout_seconds ({self.close_timeout_seconds}) must be below "
                f"graceful_timeout_seconds ({self.graceful_timeout_seconds})"
            )
        if self.broker != "memory" and not self.broker.startswith(("redis://", "rediss://")):
            raise ValueError(f"broker {self.broker!r}: use 'memory' or a redis:// or rediss:// URL")
        self._check_acked_queues()
        self._check_auth()
        return self

    def _check_acked_queues(self) -> None:
        for pattern, rule in [("(default)", ChannelRule()), *self.channels.items()]:
            config = self._resolve(rule)
            # The global ``ack`` applies to queue channels; a rule saying so on a broadcast
            # channel is a mistake worth an error.
            if rule.ack == "explicit" and config.mode != "queue":
                raise ValueError(
                    f"channels {pattern!r}: ack = 'explicit' is for queue channels (mode = 'queue')"
                )
            dead = config.dead_letter_channel
            if dead is not None and not _CHANNEL_NAME.fullmatch(dead):
                raise ValueError(
                    f"channels {pattern!r}: dead_letter_channel {dead!r} is not a channel name"
                )
            if not config.acked:
                continue
            # A dead-letter channel that is itself an acked queue would pass its own dead jobs
            # on and on (or to itself). The pattern stands for the names it matches.
            target = config.dead_letter_of(pattern)
            if self.channel_config(target).acked:
                raise ValueError(
                    f"channels {pattern!r}: its dead-letter channel {target!r} is an acked queue "
                    "too; give dead letters a rule of their own before this one (e.g. "
                    "channels.\"*.dead\" with mode = 'broadcast')"
                )

    def _check_auth(self) -> None:
        keys = [
            name
            for name in ("auth_hmac_secret", "auth_public_key_file", "auth_jwks_url")
            if getattr(self, name) is not None
        ]
        if len(keys) > 1:
            raise ValueError(f"set one key source, not {' and '.join(keys)}")
        for algorithm in self.auth_algorithms:
            if algorithm not in ALGORITHMS:
                raise ValueError(
                    f"auth_algorithms: {algorithm!r} is not one of {sorted(ALGORITHMS)}"
                )
            symmetric = algorithm.startswith("HS")
            if keys and symmetric != (keys[0] == "auth_hmac_secret"):
                raise ValueError(
                    f"auth_algorithms: {algorithm} does not go with {keys[0]} "
                    "(HS* needs the HMAC secret; the others a public key or JWKS)"
                )
        secret = self.auth_hmac_secret
        if secret is not None and len(secret.get_secret_value().encode()) < MIN_HMAC_SECRET_BYTES:
            raise ValueError(
                f"auth_hmac_secret must be at least {MIN_HMAC_SECRET_BYTES} bytes (RFC 7518 3.2)"
            )
        if self.auth_public_key_file is not None and not self.auth_public_key_file.is_file():
            raise ValueError(f"auth_public_key_file {self.auth_public_key_file} does not exist")
        jwks = self.auth_jwks_url
        if jwks is not None and "://" in jwks and not _trusted_key_set_url(jwks):
            # Anyone on the path of a plain-HTTP fetch could serve keys of their own, and sign
            # any token with them.
            raise ValueError(
                "auth_jwks_url must be an https:// URL (or a file path); http:// only on "
                "a loopback address"
            )
        Grant.parse(self.auth_anonymous)  # each raises a ValueError naming what is wrong
        parse_origin_patterns(self.allowed_origins)

    @property
    def auth_enabled(self) -> bool:
        """True when a key is configured: clients are identified by tokens."""
        return (
            self.auth_hmac_secret is not None
            or self.auth_public_key_file is not None
            or self.auth_jwks_url is not None
        )

    @property
    def shared_broker(self) -> bool:
        """True when channels are shared between processes (any broker but ``memory``)."""
        return self.broker != "memory"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file.get()
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    def channel_config(self, name: str) -> ChannelConfig:
        """The configuration of channel ``name``: the first matching rule over the defaults.

        One object per rule (and one for the defaults), made once: every channel a rule
        matches shares it.
        """
        pattern = next(
            (pattern for pattern in self.channels if fnmatch.fnmatchcase(name, pattern)), None
        )
        config = self._configs.get(pattern)
        if config is None:
            config = self._configs[pattern] = self._resolve(
                self.channels[pattern] if pattern is not None else ChannelRule()
            )
        return config

    def _resolve(self, rule: ChannelRule) -> ChannelConfig:
        """Each of the rule's fields, or where it leaves one out (``None``) the global setting
        of the same name; ``block_timeout_seconds`` is global only, ``dead_letter_channel``
        per rule only."""
        values: dict[str, Any] = {}
        for name in ChannelConfig.model_fields:
            value = getattr(rule, name, None)
            if value is None:
                value = getattr(self, name, None)
            if value is not None:
                values[name] = value
        return ChannelConfig(**values)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Read and validate the settings.

    ``config_file`` defaults to the ``TRIORELAY_CONFIG`` environment variable. Raises
    :class:`SettingsError` listing every bad value, or naming a config file that cannot be read.
    """
    path = config_file if config_file is not None else os.environ.get("TRIORELAY_CONFIG")
    resolved = Path(path) if path else None
    if resolved is not None and not resolved.is_file():
        raise SettingsError(f"config file {resolved} does not exist")
    token = _config_file.set(resolved)
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise SettingsError(_describe(error)) from None
    except ValueError as error:  # a malformed TOML file or JSON value
        raise SettingsError(f"cannot read settings: {error}") from None
    finally:
        _config_file.reset(token)


def _describe(error: ValidationError) -> str:
    lines = ["invalid settings:"]
    for problem in error.errors():
        name = ".".join(str(part) for part in problem["loc"]) or "settings"
        env = f"TRIORELAY_{name.split('.')[0].upper()}" if problem["loc"] else ""
        where = f"{name} ({env})" if env else name
        lines.append(f"  {where}: {problem['msg']}")
    return "\n".join(lines)


def _trusted_key_set_url(url: str) -> bool:
    """An ``https://`` URL, or ``http://`` to a loopback address (a sidecar, a test)."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    if parts.scheme != "http" or parts.hostname is None:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False
