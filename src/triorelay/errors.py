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
    │   ├── UnsupportedData        close 1003: binary where the protocol wants text, or back
    │   ├── ProtocolViolation      close 1008: a message the protocol does not allow there
    │   ├── UploadMismatch         close 1008: the upload is not what its metadata declared
    │   └── UnknownUpstream        HTTP 404 / close 4404
    └── ServiceError               a valid request the relay could not serve; carries the answer
        ├── UpstreamError          HTTP 502 / close 1014: an upstream unreachable or failing
        └── StorageError           HTTP 500 / close 1011: the upload directory failed

Local misuse (a bad setting), a bad request (the client's fault) and a failure behind the relay
(an upstream, the disk) are separate branches, so a handler can turn every
:class:`RequestError` and :class:`ServiceError` into the right status or close code in one place.
"""

from __future__ import annotations

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
    #: ``/ws/proxy/{name}`` or the ``/ws`` proxy flow asked for an upstream that is not
    #: configured (4000-4999 is for applications; 4404 mirrors HTTP 404).
    UNKNOWN_UPSTREAM = 4404


class TriorelayError(Exception):
    """Root of every exception triorelay raises on purpose."""


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
