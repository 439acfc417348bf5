"""The token the generator presents on every WebSocket handshake, and keeping it out of sight.

``--token TOKEN`` adds ``Authorization: Bearer TOKEN`` to every handshake the generator makes
(producers, consumers, stalled and idle connections; trio-websocket and the lean wsproto
client alike); ``--token-in query`` sends it as ``?token=TOKEN`` instead, the way browsers
must. The token is a credential: results record only ``params.token_in`` (how it travelled,
``null`` without one), and :func:`redact_in_logs` keeps it out of every log line of the
process (trio-websocket logs the URL it connects to at DEBUG level). I/O-free but for that.
"""

from __future__ import annotations

import logging
from typing import Final, Literal, get_args
from urllib.parse import urlencode, urlsplit, urlunsplit

TokenIn = Literal["header", "query"]
#: Every way of sending the token (``--token-in``), the default first.
TOKEN_IN: Final[tuple[TokenIn, ...]] = get_args(TokenIn)
#: The query parameter of ``--token-in query``: triorelay's default ``auth_query_parameter``
#: (a compare test checks that they agree).
QUERY_PARAMETER: Final = "token"
#: What a log line shows instead of the token.
REDACTED: Final = "<token>"


def token_url(url: str, token: str | None, token_in: TokenIn) -> str:
    """Return ``url`` with the token as a query parameter when ``token_in`` is ``query``."""
    if token is None or token_in != "query":
        return url
    parts = urlsplit(url)
    extra = urlencode({QUERY_PARAMETER: token})
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit(parts._replace(query=query))


def token_headers(token: str | None, token_in: TokenIn) -> list[tuple[bytes, bytes]]:
    """Return the extra handshake headers: ``Authorization: Bearer`` when ``token_in`` is
    ``header``, else none."""
    if token is None or token_in != "header":
        return []
    return [(b"Authorization", b"Bearer " + token.encode())]


def token_param(token: str | None, token_in: TokenIn) -> TokenIn | None:
    """What a result records of the token: how it travelled, ``None`` without one."""
    return None if token is None else token_in


class _RedactingFormatter(logging.Formatter):
    """Formats a record with the wrapped formatter, then replaces the token (tracebacks too)."""

    def __init__(self, inner: logging.Formatter, token: str) -> None:
        super().__init__()
        self._inner = inner
        self._token = token

    def format(self, record: logging.LogRecord) -> str:
        return self._inner.format(record).replace(self._token, REDACTED)


def redact_in_logs(token: str | None) -> None:
    """Make every handler of the root logger show :data:`REDACTED` instead of ``token``.

    Call it after ``logging.basicConfig``; with no token it does nothing.
    """
    if not token:
        return
    for handler in logging.getLogger().handlers:
        inner = handler.formatter or logging.Formatter()
        handler.setFormatter(_RedactingFormatter(inner, token))
