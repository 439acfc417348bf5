"""Who may do what: one decision for every WebSocket handshake and HTTP request.

:meth:`Access.identify` turns what a request carries (:class:`Credentials`) into an
:class:`~triorelay.auth.tokens.Identity`, or refuses it before any work:

1. **Origin** (:mod:`triorelay.auth.origins`): a browser page of another origin gets 403.
2. **Token**, from ``Authorization: Bearer``, else the ``auth_query_parameter`` (browsers
   cannot set headers on a WebSocket), else the ``auth_cookie_name`` cookie: verified
   (:class:`~triorelay.auth.tokens.TokenVerifier`); an invalid one gets 401.
3. **No token**: with a key configured, the client gets what ``auth_anonymous`` grants
   (nothing by default). With no key at all, anonymous clients have every right, but only
   from a loopback address unless ``allow_anonymous`` is set: others get 403 naming the
   setting. So a relay started with no set-up is safe where it listens by default
   (127.0.0.1), and cannot be exposed by mistake.

Each route then asks for its right (:meth:`Access.require`, :meth:`Access.require_channel`):
403 without it (401 for a client without a token: it needs one).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import NoReturn
from urllib.parse import parse_qs

from triorelay.auth.grants import ChannelRight, Grant
from triorelay.auth.origins import origin_allowed, parse_origin_patterns
from triorelay.auth.tokens import Identity, TokenVerifier
from triorelay.errors import Forbidden, Unauthorized
from triorelay.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a request carries that says who sends it, and from where."""

    token: str | None
    origin: str | None
    host: str | None
    #: The peer's address (None for a Unix socket: local).
    client: str | None
    #: The request says it was forwarded (``Forwarded``, ``X-Forwarded-For``, ``X-Real-IP``,
    #: ``Via``...): a proxy's, whatever its peer address and ``Host`` say.
    forwarded: bool = False


#: Headers a proxy adds (its clients' address, its own name): a request with one is not a
#: local client's, even from 127.0.0.1 with a loopback ``Host`` (nginx sends
#: ``Host: 127.0.0.1:8000`` unless told ``proxy_set_header Host $host``).
FORWARDING_HEADERS = frozenset(
    {"forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-real-ip", "via"}
)


def credentials_from_headers(
    headers: Iterable[tuple[str, str]],
    query_string: str,
    client: str | None,
    settings: Settings,
) -> Credentials:
    """The :class:`Credentials` of a request with these (lower-case) headers and query."""
    token = origin = host = None
    cookie_header = ""
    forwarded = False
    for name, value in headers:
        if name in FORWARDING_HEADERS:
            forwarded = True
        elif name == "authorization":
            scheme, _, credentials = value.partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                token = credentials.strip()
        elif name == "origin":
            origin = value
        elif name == "host":
            host = value
        elif name == "cookie":
            cookie_header = value
    if token is None and query_string:
        values = parse_qs(query_string).get(settings.auth_query_parameter)
        if values:
            token = values[0]
    if token is None and settings.auth_cookie_name and cookie_header:
        try:
            morsel = SimpleCookie(cookie_header).get(settings.auth_cookie_name)
        except CookieError:
            morsel = None
        if morsel is not None and morsel.value:
            token = morsel.value
    return Credentials(token=token, origin=origin, host=host, client=client, forwarded=forwarded)


def is_loopback(client: str | None) -> bool:
    """True for a loopback address (127.0.0.0/8, ::1) or a Unix socket's peer (None)."""
    if client is None:
        return True
    try:
        return ipaddress.ip_address(client).is_loopback
    except ValueError:
        return False


def is_loopback_host(host: str | None) -> bool:
    """True for a ``Host`` header naming this machine: ``localhost``, a loopback address (with
    or without a port), or none at all (HTTP/1.0, a Unix socket)."""
    if not host:
        return True
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    name = name.strip("[]").split("]")[0] if name.startswith("[") else name
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Access:
    """The relay's access rules, built from the settings at startup."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.auth_enabled
        self.verifier = TokenVerifier(settings) if self.enabled else None
        self._origins = parse_origin_patterns(settings.allowed_origins)
        self._anonymous = (
            Grant.parse(settings.auth_anonymous) if self.enabled else Grant.everything()
        )
        self._allow_anonymous = settings.allow_anonymous

    def describe(self) -> str:
        """The mode, for the start-up log."""
        if self.enabled:
            return "tokens required; anonymous clients get auth_anonymous's rights"
        if self._allow_anonymous:
            return "no key configured: anonymous clients from any address (allow_anonymous)"
        return "no key configured: anonymous clients from loopback addresses only"

    async def identify(self, credentials: Credentials, *, check_origin: bool = True) -> Identity:
        """Who sends this request; raise :class:`~triorelay.errors.Forbidden` (403) or
        :class:`~triorelay.errors.Unauthorized` (401)."""
        if check_origin and not origin_allowed(credentials.origin, credentials.host, self._origins):
            raise Forbidden(
                "this origin may not use the relay (see allowed_origins)", label="origin"
            )
        if credentials.token is not None and self.verifier is not None:
            return await self.verifier.verify(credentials.token)
        if (
            not self.enabled
            and not self._allow_anonymous
            and not (
                # The Host must be a loopback name too, and no proxy may have forwarded it: a
                # proxy on the same host (every client then comes from 127.0.0.1) or a
                # DNS-rebinding page (Host: its own name, peer 127.0.0.1) is not a local
                # client.
                is_loopback(credentials.client)
                and is_loopback_host(credentials.host)
                and not credentials.forwarded
            )
        ):
            raise Forbidden(
                "anonymous clients are served on loopback only: configure a key "
                "(TRIORELAY_AUTH_HMAC_SECRET, ...) or set TRIORELAY_ALLOW_ANONYMOUS=true",
                label="anonymous_not_local",
            )
        return Identity(sub=None, grant=self._anonymous)

    @staticmethod
    def client_key(identity: Identity, credentials: Credentials) -> str:
        """Whom per-client limits count: the token's subject, else the address."""
        if identity.sub is not None:
            return f"sub:{identity.sub}"
        return f"addr:{credentials.client or 'local'}"

    @staticmethod
    def require(identity: Identity, right: str) -> None:
        """Refuse unless ``identity`` has endpoint right ``right``: :class:`Forbidden` (403),
        or :class:`Unauthorized` (401) for a client without a token (it needs one)."""
        if not identity.grant.allows(right):
            _refuse(identity, f"this needs the {right!r} right")

    @staticmethod
    def require_channel(identity: Identity, right: ChannelRight, channel: str) -> None:
        """Refuse unless ``identity`` may ``right`` on ``channel`` (as :meth:`require`)."""
        if not identity.grant.allows_channel(right, channel):
            _refuse(identity, f"this needs the {right!r} right on {channel!r}")


def _refuse(identity: Identity, what: str) -> NoReturn:
    if identity.sub is None:
        raise Unauthorized(f"a token is needed: {what}", label="no_token")
    raise Forbidden(f"not allowed: {what}", label="no_right")
