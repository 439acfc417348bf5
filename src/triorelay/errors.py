"""The exception root of triorelay and the WebSocket close codes it uses.

Exception tree::

    TriorelayError                 every error raised on purpose by triorelay
    ├── SettingsError              a setting has a bad value (raised at start-up)
    ├── RequestError               a client asked for something invalid; carries the answer
    │   ├── InvalidChannelName     HTTP 400 / close 1008
    │   ├── InvalidQuery           HTTP 400 / close 1008
    │   ├── MessageTooBig          HTTP 413 / close 1009
    │   │   └── UploadTooBig       HTTP 413 / close 1009
    │   ├── TooManyChannels        HTTP 503 / close 1013
    │   ├── BrokerUnavailable      HTTP 503 / close 1013
    │   ├── ShuttingDown           HTTP 503 / close 1001: the relay takes no new connections
    │   ├── TooManyConnections     HTTP 503 / close 1013: the relay's or the client's limit
    │   ├── PublishTimeout         HTTP 503: an HTTP publish found no room in time
    │   ├── QueueFull              HTTP 503 / close 1013: a queue stayed full too long
    │   ├── UnsupportedCharset     HTTP 415: HTTP text not in UTF-8
    │   ├── InvalidText            HTTP 400 / close 1007: text not valid in its charset
    │   ├── RateLimited            HTTP 429 / close 1008: publishing past the rate
    │   ├── Unauthorized           HTTP 401 / close 4401: no valid token (where one is needed)
    │   ├── Forbidden              HTTP 403 / close 4403: the token (or origin) lacks the right
    │   ├── UnsupportedData        close 1003: binary where the protocol wants text, or back
    │   ├── ProtocolViolation      close 1008: a message the protocol does not allow there
    │   ├── UploadMismatch         close 1008: the upload is not what its metadata declared
    │   ├── RecoveryFailed         HTTP 410 / close 4410: a required resume cannot be done
    │   ├── MethodNotAllowed       HTTP 405: an endpoint read with GET, asked otherwise
    │   └── UnknownUpstream        HTTP 404 / close 4404
    └── ServiceError               a valid request the relay could not serve; carries the answer
        ├── UpstreamError          HTTP 502 / close 1014: an upstream unreachable or failing
        └── StorageError           HTTP 500 / close 1011: the upload directory failed
            └── StorageFull        HTTP 507 / close 1013: the upload quota is used up

Local misuse (a bad setting), a bad request (the client's fault) and a failure behind the relay
(an upstream, the disk) are separate branches, so a handler can turn every
:class:`RequestError` and :class:`ServiceError` into the right status or close code in one place.
"""

from __future__ import annotations

import re
from enum import IntEnum


class CloseCode(IntEnum):
    """WebSocket close codes triorelay sends or reads (RFC 6455 section 7.4, the IANA registry).

    1005, 1006 and 1015 are never sent in a close frame: they name what happened instead of one.
    """

    #: The consumer or producer is done; also what a relay sends when a client closes first.
    NORMAL = 1000
    #: The server is shutting down (SIGINT/SIGTERM): reconnect to another instance later.
    GOING_AWAY = 1001
    #: A frame that breaks RFC 6455 (for example reserved bits set without an extension).
    PROTOCOL_ERROR = 1002
    #: A frame type the endpoint does not take (for example binary where only text is allowed).
    UNSUPPORTED_DATA = 1003
    #: Read, never sent: the peer's close frame carried no code (RFC 6455 section 7.1.5).
    NO_STATUS_RECEIVED = 1005
    #: Read, never sent: the connection ended without any close frame.
    ABNORMAL_CLOSURE = 1006
    #: A text message (or a close reason) that is not valid UTF-8.
    INVALID_PAYLOAD = 1007
    #: A policy was broken: bad channel name, bad query parameter.
    POLICY_VIOLATION = 1008
    #: A message was larger than ``max_message_bytes``.
    MESSAGE_TOO_BIG = 1009
    #: The server failed unexpectedly while handling this connection.
    INTERNAL_ERROR = 1011
    #: Try again later: the consumer was too slow for its channel (policy ``disconnect``),
    #: the relay is at its channel limit, or its broker (Redis) is unavailable.
    TRY_AGAIN_LATER = 1013
    #: The proxy could not reach its upstream (refused, timed out, rejected the handshake), or
    #: the upstream went away without a close frame. RFC 6455 registry: "Bad Gateway".
    BAD_GATEWAY = 1014
    #: Read, never sent: the connection ended without a close frame because TLS failed.
    TLS_HANDSHAKE_FAILED = 1015
    #: The connection's token expired (at its ``exp``, unless refreshed in-band), or a refresh
    #: carried an invalid token (4000-4999 is for applications; 4401 mirrors HTTP 401).
    TOKEN_EXPIRED = 4401
    #: A refreshed token no longer grants what the connection does (4403 mirrors HTTP 403).
    FORBIDDEN = 4403
    #: ``/ws/proxy/{name}`` or the ``/ws`` proxy flow asked for an upstream that is not
    #: configured (4404 mirrors HTTP 404).
    UNKNOWN_UPSTREAM = 4404
    #: ``recover=required`` and the resume cannot be done; the reason says why (``recovery
    #: failed: trimmed``...). 4410 mirrors HTTP 410 Gone: what the consumer missed is gone.
    RECOVERY_FAILED = 4410


class TriorelayError(Exception):
    """Root of every exception triorelay raises on purpose."""

    def __init__(self, message: str = "", *, label: str | None = None) -> None:
        super().__init__(message)
        self._label = label

    @property
    def label(self) -> str:
        """What the error counts under in metrics (a refusal's ``reason``): a short name set
        by the code, never by a client's input, so the set is bounded: the class's name in
        snake case unless the raiser says more (``Unauthorized(..., label="expired")``)."""
        if self._label is not None:
            return self._label
        return re.sub(r"(?<!^)(?=[A-Z])", "_", type(self).__name__).lower()


class SettingsError(TriorelayError):
    """A setting has a bad value. The message names each bad setting and why."""


class RequestError(TriorelayError):
    """A client asked for something invalid.

    ``status`` is the HTTP answer before a WebSocket upgrade (or to an HTTP request) and
    ``close_code`` the close code once the WebSocket is open. ``str(error)`` is the reason
    sent to the client, so it must not leak anything internal.
    """

    status: int = 400
    close_code: CloseCode = CloseCode.POLICY_VIOLATION


class InvalidChannelName(RequestError):
    """A channel name outside ``[A-Za-z0-9._:-]{1,128}``."""


class InvalidQuery(RequestError):
    """A query parameter with a value the endpoint does not know."""


class MessageTooBig(RequestError):
    """A message over ``max_message_bytes``."""

    status = 413
    close_code = CloseCode.MESSAGE_TOO_BIG


class TooManyChannels(RequestError):
    """The relay already holds ``max_channels`` channels."""

    status = 503
    close_code = CloseCode.TRY_AGAIN_LATER


class BrokerUnavailable(RequestError):
    """The broker (Redis) cannot take the request now: nothing was published or subscribed."""

    status = 503
    close_code = CloseCode.TRY_AGAIN_LATER


class ShuttingDown(RequestError):
    """The relay is shutting down and takes no new connections."""

    status = 503
    close_code = CloseCode.GOING_AWAY


class UnsupportedCharset(RequestError):
    """An HTTP publish whose text is in a charset other than UTF-8 (or ASCII)."""

    status = 415


class InvalidText(RequestError):
    """Text that is not valid in its charset."""

    close_code = CloseCode.INVALID_PAYLOAD


class QueueFull(RequestError):
    """A queue channel stayed full for ``block_timeout_seconds``: the message was not queued."""

    status = 503
    close_code = CloseCode.TRY_AGAIN_LATER


class PublishTimeout(RequestError):
    """An HTTP publish that waited ``publish_timeout_seconds`` for room: nothing published."""

    status = 503
    close_code = CloseCode.TRY_AGAIN_LATER


class TooManyConnections(RequestError):
    """The relay holds ``max_connections``, or the client ``max_connections_per_client``."""

    status = 503
    close_code = CloseCode.TRY_AGAIN_LATER


class RateLimited(RequestError):
    """A producer published past ``publish_rate_*_per_second`` (a WebSocket producer is
    closed with 1008; an HTTP publish gets 429)."""

    status = 429


class Unauthorized(RequestError):
    """No valid token where one is needed: missing, expired, badly signed, not for us.

    The reason says which, and never repeats the token.
    """

    status = 401
    close_code = CloseCode.TOKEN_EXPIRED


class Forbidden(RequestError):
    """A valid client without the right, a page from another origin, or an anonymous client
    where anonymous clients are not served."""

    status = 403
    close_code = CloseCode.FORBIDDEN


class RecoveryFailed(RequestError):
    """``recover=required``, and the messages after the consumer's position cannot all be
    replayed (the reason is in the message: ``recovery failed: trimmed``...)."""

    status = 410
    close_code = CloseCode.RECOVERY_FAILED


class MethodNotAllowed(RequestError):
    """An HTTP method the endpoint does not serve (an event stream is read with GET)."""

    status = 405


class UploadTooBig(MessageTooBig):
    """An upload over ``max_upload_bytes`` (declared in its metadata, or as it arrived)."""


class UnsupportedData(RequestError):
    """A binary message where the protocol expects text, or a text one where it expects binary."""

    close_code = CloseCode.UNSUPPORTED_DATA


class ProtocolViolation(RequestError):
    """A message the endpoint's protocol does not allow at that point (an unknown flow name)."""


class UploadMismatch(RequestError):
    """An upload whose size or sha256 is not the one its metadata declared; it is discarded."""


class UnknownUpstream(RequestError):
    """A proxy upstream name that ``proxy_upstreams`` does not configure."""

    status = 404
    close_code = CloseCode.UNKNOWN_UPSTREAM


class ServiceError(TriorelayError):
    """A valid request the relay could not serve because of something behind it.

    Like :class:`RequestError`, ``status`` and ``close_code`` are the answer, and
    ``str(error)`` is the reason sent to the client: nothing internal (no upstream URL, no path).
    """

    status: int = 500
    close_code: CloseCode = CloseCode.INTERNAL_ERROR


class UpstreamError(ServiceError):
    """A proxy upstream could not be reached in time, refused the handshake, or failed."""

    status = 502
    close_code = CloseCode.BAD_GATEWAY


class StorageError(ServiceError):
    """The upload directory could not take a file (full disk, permissions)."""


class StorageFull(StorageError):
    """The upload directory holds ``upload_quota_bytes``: no new file, no more bytes."""

    status = 507
    close_code = CloseCode.TRY_AGAIN_LATER
