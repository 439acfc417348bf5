"""The exception root of triorelay and the WebSocket close codes it uses.

Exception tree::

    TriorelayError                 every error raised on purpose by triorelay
    ├── SettingsError              a setting has a bad value (raised at start-up)
    └── RequestError               a client asked for something invalid; carries the answer
        ├── InvalidChannelName     HTTP 400 / close 1008
        ├── InvalidQuery           HTTP 400 / close 1008
        ├── MessageTooBig          HTTP 413 / close 1009
        ├── TooManyChannels        HTTP 503 / close 1013
        └── BrokerUnavailable      HTTP 503 / close 1013

Local misuse (a bad setting) and peer failure (a bad request) are separate branches, so a
handler can turn every :class:`RequestError` into the right status or close code in one place.
"""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    """WebSocket close codes sent by triorelay (RFC 6455 section 7.4 and the IANA registry)."""

    #: The consumer or producer is done; also what a relay sends when a client closes first.
    NORMAL = 1000
    #: The server is shutting down (SIGINT/SIGTERM): reconnect to another instance later.
    GOING_AWAY = 1001
    #: A frame that breaks RFC 6455 (for example reserved bits set without an extension).
    PROTOCOL_ERROR = 1002
    #: A frame type the endpoint does not take (for example binary where only text is allowed).
    UNSUPPORTED_DATA = 1003
    #: A text message that is not valid UTF-8.
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
