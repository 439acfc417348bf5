"""The client's exceptions, and which close codes and HTTP statuses are worth a retry.

Exception tree (under :class:`triorelay.errors.TriorelayError`)::

    ClientError                    a client call failed; retrying the same call cannot help
    ├── ConnectionFailed           no WebSocket: refused, reset, timed out (publishers only:
    │                              a subscription retries these by itself)
    ├── Rejected                   the relay refused the handshake: ``status``, ``body``
    ├── Closed                     the relay (or this client) closed: ``code``, ``reason``
    │   └── RecoveryFailed         4410 with ``recover="required"``: the resume is impossible
    └── ProtocolError              the relay does not speak ``triorelay.v1``, or broke it

A subscription raises only what it cannot get past by reconnecting (see
:func:`retryable_close` and :func:`retryable_status`); a publisher raises every failure,
because it never publishes a message twice on its own.
"""

from __future__ import annotations

from triorelay.errors import CloseCode, TriorelayError

#: Close codes after which the same connection would be closed again the same way.
_FINAL_CLOSE_CODES = frozenset(
    {
        CloseCode.PROTOCOL_ERROR,  # a bug on one side: looping would hide it
        CloseCode.UNSUPPORTED_DATA,
        CloseCode.INVALID_PAYLOAD,
        CloseCode.POLICY_VIOLATION,  # a bad channel name or query, a broken rule
        CloseCode.MESSAGE_TOO_BIG,  # the same message would come again
        CloseCode.FORBIDDEN,
        CloseCode.RECOVERY_FAILED,
    }
)

#: HTTP statuses of a refused handshake that say "later", not "never".
_RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def retryable_close(code: int | None, *, fresh_token: bool) -> bool:
    """Whether a subscription reconnects after a close with ``code`` (None: no close frame).

    4401 (token expired) is retried only when a fresh token can be had (``fresh_token``: the
    token is a provider); 1002, 1003, 1007, 1008, 1009, 4403 and 4410 never are. Everything
    else (1000, 1001 shutdown, 1006 dropped, 1011, 1013 slow or broker down...) is.
    """
    if code == CloseCode.TOKEN_EXPIRED:
        return fresh_token
    return code not in _FINAL_CLOSE_CODES


def retryable_status(status: int) -> bool:
    """Whether a subscription retries after the relay refused its handshake with ``status``.

    503 (shutting down, broker unavailable, too many connections), 5xx and 429 are retried;
    any other refusal (400 bad position or name, 401 even with a token provider, since the
    token it just gave was refused, 403, 404...) is final.
    """
    return status in _RETRYABLE_STATUSES


class ClientError(TriorelayError):
    """Root of the client's exceptions: the call failed, and repeating it would not help."""


class ConnectionFailed(ClientError):
    """No WebSocket could be opened or kept: refused, reset or timed out before the handshake
    ended. The cause is chained (``__cause__``)."""


class Rejected(ClientError):
    """The relay refused the WebSocket handshake with HTTP ``status``; ``body`` says why."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"the relay refused the connection: {status} {body}".rstrip())
        self.status = status
        self.body = body


class Closed(ClientError):
    """The connection was closed with ``code`` (None: without a close frame) and ``reason``."""

    def __init__(self, code: int | None, reason: str) -> None:
        shown = "without a close frame" if code is None else f"with {code}"
        super().__init__(f"connection closed {shown} {reason}".rstrip())
        self.code = code
        self.reason = reason


class RecoveryFailed(Closed):
    """With ``recover="required"``, the relay could not resume from the position given.

    ``recovery_reason`` is one of ``trimmed``, ``expired``, ``epoch``, ``future``,
    ``too_many``, ``disabled`` (``triorelay.framing.RecoveryReason``) when the relay said so.
    """

    def __init__(self, code: int | None, reason: str, recovery_reason: str | None) -> None:
        super().__init__(code, reason)
        self.recovery_reason = recovery_reason


class ProtocolError(ClientError):
    """The relay did not negotiate ``triorelay.v1``, or sent a frame it does not allow."""
