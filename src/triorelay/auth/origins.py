"""The ``Origin`` check: which web pages may talk to the relay. Pure, no I/O.

Browsers apply no same-origin rule to WebSocket, and a ``text/plain`` POST needs no CORS
preflight, so any page a user opens could use the relay on their behalf (cross-site
WebSocket hijacking). The relay therefore checks the ``Origin`` header that browsers always
send on those requests:

- no ``Origin``: not a browser (a server, a CLI): passes;
- ``null`` (sandboxed frames, ``file://`` pages, some redirects): never passes;
- the request's own origin (the origin's host and port are the ``Host`` header's): passes;
- an origin listed in ``allowed_origins``, exactly or by a ``scheme://*.domain[:port]``
  pattern (one or more labels before ``domain``): passes;
- anything else, or a malformed origin: refused with 403.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class OriginPattern:
    """An allowed origin: ``scheme``, ``host`` (or ``.domain`` for a wildcard), ``port``."""

    scheme: str
    host: str
    port: int | None
    wildcard: bool

    def matches(self, scheme: str, host: str, port: int | None) -> bool:
        if scheme != self.scheme or port != self.port:
            return False
        return (
            host.endswith(self.host) and host != self.host[1:]
            if self.wildcard
            else host == self.host
        )


def _split(origin: str) -> tuple[str, str, int | None] | None:
    """``(scheme, host, port)`` of a serialized origin, or None if it is not one."""
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        return None
    return parts.scheme, parts.hostname.lower(), port


def parse_origin_patterns(origins: list[str]) -> tuple[OriginPattern, ...]:
    """The ``allowed_origins`` setting, parsed; a ValueError names a malformed entry."""
    patterns: list[OriginPattern] = []
    for origin in origins:
        wildcard = "://*." in origin
        split = _split(origin.replace("://*.", "://", 1) if wildcard else origin)
        if split is None or "*" in split[1]:
            raise ValueError(
                f"allowed_origins: {origin!r} is not an origin (scheme://host[:port]) "
                "or a pattern (scheme://*.domain[:port])"
            )
        scheme, host, port = split
        patterns.append(OriginPattern(scheme, "." + host if wildcard else host, port, wildcard))
    return tuple(patterns)


def _host_header(host: str) -> tuple[str, int | None] | None:
    split = _split(f"http://{host}")
    return None if split is None else (split[1], split[2])


def origin_allowed(
    origin: str | None, host: str | None, allowed: tuple[OriginPattern, ...]
) -> bool:
    """Whether a request with these ``Origin`` and ``Host`` headers may proceed."""
    if origin is None:
        return True
    split = _split(origin)
    if split is None:  # "null", or not an origin at all
        return False
    scheme, origin_host, port = split
    own = _host_header(host) if host else None
    if own is not None and own == (origin_host, port):
        return True
    return any(pattern.matches(scheme, origin_host, port) for pattern in allowed)
