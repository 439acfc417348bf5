"""Tokens: JWTs verified with PyJWT against keys and algorithms from the settings.

The algorithms come from ``auth_algorithms`` (never from the token's header), so ``alg: none``
and HS/RS confusion (a token signed with HS256 using the RSA public key as the secret) are
refused: PyJWT checks the header's ``alg`` against that list, and refuses an asymmetric key as
an HMAC secret. ``exp`` and ``sub`` are required; ``aud`` and ``iss`` are checked when set.

Keys, one source (the settings allow only one):

- ``auth_hmac_secret``: HS256/384/512;
- ``auth_public_key_file``: a PEM public key (RSA, EC or Ed25519), read at start;
- ``auth_jwks_url``: a JWKS document. An ``https://`` URL is fetched in a worker thread by
  PyJWT's ``PyJWKClient``, which keeps the set for ``auth_jwks_lifespan_seconds`` (a key
  removed from it is refused once it is fetched again; through an outage of the issuer the
  last set serves for one more lifespan at most), and fetches again when a token names
  an unknown ``kid`` (no more than once every 30 s); each fetch is bounded by
  ``auth_jwks_timeout_seconds``. A file
  path (PyJWT's client takes URLs only) is read again on an unknown ``kid``, at most once a
  second, and keeps at most ``auth_jwks_max_keys`` keys.

A token whose ``kid`` the set in hand has is verified at once, in the relay's own thread; only
a fetch (or a read of the file) goes to a worker thread, one at a time. While one is under
way, a token whose ``kid`` the last set had (within its lifespan and the one more an outage
is served) is verified with that set rather than kept waiting for the fetch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import trio

from triorelay.auth.grants import Grant, InvalidGrant
from triorelay.errors import Unauthorized
from triorelay.settings import Settings

log = logging.getLogger(__name__)

CLAIM = "triorelay"

#: Why PyJWT refused a token, in words a client can act on (never the token itself).
_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not yet valid"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidAlgorithmError, "algorithm not accepted"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidKeyError, "algorithm not accepted for this key"),
)
"""The claim that holds a token's rights (:class:`~triorelay.auth.grants.Grant`)."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a client is and what it may do.

    ``sub`` is the token's subject (None for an anonymous client); ``expires_at`` its ``exp``
    (Unix time; None without a token).
    """

    sub: str | None
    grant: Grant
    expires_at: float | None = None


def default_algorithms(settings: Settings) -> list[str]:
    """``auth_algorithms``, or the default for the configured key."""
    if settings.auth_algorithms:
        return list(settings.auth_algorithms)
    return ["HS256"] if settings.auth_hmac_secret is not None else ["RS256", "ES256"]


class TokenVerifier:
    """Verifies tokens for one relay; build it at startup (it reads the key file)."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self._algorithms = default_algorithms(settings)
        self._audience = settings.auth_audience
        self._issuer = settings.auth_issuer
        self._leeway = settings.auth_leeway_seconds
        self._clock = clock
        self._key: Any = None
        self._jwks: _JwksClient | _KeyFile | None = None
        if settings.auth_hmac_secret is not None:
            self._key = settings.auth_hmac_secret.get_secret_value()
        elif settings.auth_public_key_file is not None:
            self._key = Path(settings.auth_public_key_file).read_bytes()
        elif settings.auth_jwks_url is not None and "://" not in settings.auth_jwks_url:
            self._jwks = _KeyFile(Path(settings.auth_jwks_url), settings.auth_jwks_max_keys)
        elif settings.auth_jwks_url is not None:
            self._jwks = _JwksClient(
                settings.auth_jwks_url,
                # Not PyJWT's per-kid cache: it never expires, so a key removed from the set
                # (rotated out after a leak) would be accepted for as long as it is used.
                # The set's own cache (lifespan) is the one: a removed key stops being
                # accepted once the set is fetched again.
                cache_keys=False,
                lifespan=settings.auth_jwks_lifespan_seconds,
                timeout=settings.auth_jwks_timeout_seconds,
            )
        self._jwks_limiter = trio.CapacityLimiter(1)

    async def verify(self, token: str) -> Identity:
        """The identity ``token`` proves; raise :class:`Unauthorized` with the reason.

        The reason names what is wrong (expired, bad signature, wrong audience...) and never
        repeats the token.
        """
        key = self._key
        if self._jwks is not None:
            key = await self._signing_key(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={
                    "require": ["exp", "sub"],
                    "verify_aud": self._audience is not None,
                    "verify_iss": self._issuer is not None,
                },
            )
        except jwt.MissingRequiredClaimError as error:
            raise Unauthorized(
                f"invalid token: no {error.claim!r} claim", label="missing_claim"
            ) from None
        except jwt.PyJWTError as error:
            reason = next((r for kind, r in _REASONS if isinstance(error, kind)), "malformed")
            raise Unauthorized(f"invalid token: {reason}", label=reason.replace(" ", "_")) from None
        try:
            grant = Grant.parse(claims.get(CLAIM))
        except InvalidGrant as error:
            raise Unauthorized(f"invalid token: {error}", label="bad_grant") from None
        return Identity(sub=str(claims["sub"]), grant=grant, expires_at=float(claims["exp"]))

    async def _signing_key(self, token: str) -> Any:
        assert self._jwks is not None
        jwks = self._jwks
        # A kid the set in hand has: its key at once, no worker thread, no waiting for a
        # fetch. While another verification fetches (an unknown kid, or a set whose lifespan
        # is over, from a slow issuer), a kid the last set had is verified with it rather than
        # kept waiting up to auth_jwks_timeout_seconds.
        fetching = self._jwks_limiter.borrowed_tokens > 0
        known = jwks.key_in_hand(token, stale=fetching)
        if known is not None:
            return known.key
        try:
            async with self._jwks_limiter:  # one fetch at a time; others use its result
                signing_key = await trio.to_thread.run_sync(jwks.get_signing_key_from_jwt, token)
        except jwt.PyJWKClientConnectionError:
            raise Unauthorized(
                "cannot verify tokens now: the key set is unavailable", label="jwks_unavailable"
            ) from None
        except jwt.PyJWTError:
            raise Unauthorized(
                "invalid token: no key for it in the key set", label="unknown_key"
            ) from None
        return signing_key.key

    def seconds_left(self, identity: Identity) -> float | None:
        """Seconds until ``identity``'s token expires (leeway included); None: never."""
        if identity.expires_at is None:
            return None
        return identity.expires_at + self._leeway - self._clock()


class _JwksClient(jwt.PyJWKClient):
    """PyJWT's client, keeping the last key set it fetched through an outage of its issuer,
    for one more ``lifespan`` at most: without its per-kid cache (see where it is made), a
    fetch that fails once the set's lifespan is over would refuse every token, each waiting
    for its own failed fetch in turn. A set that a fetch replaced is never served again."""

    def __init__(self, uri: str, *, lifespan: float, **kwargs: Any) -> None:
        super().__init__(uri, lifespan=lifespan, **kwargs)
        self._lifespan = lifespan
        # Served until two lifespans after it was fetched: its own, and one more.
        self._stale_seconds = 2 * lifespan
        self._last: Any = None
        self._last_at = float("-inf")
        # The signing keys of the last set fetched, by kid, and when it was fetched: one
        # tuple, replaced whole by each fetch (in a worker thread; read in trio's).
        self._in_hand: tuple[dict[str, jwt.PyJWK], float] = ({}, float("-inf"))

    def fetch_data(self) -> Any:
        try:
            data = super().fetch_data()
        except jwt.PyJWKClientConnectionError as error:
            if self._last is None or time.monotonic() - self._last_at > self._stale_seconds:
                raise
            log.warning("the key set could not be fetched (%s): the last one serves", error)
            return self._last
        self._last, self._last_at = data, time.monotonic()
        # (A set PyJWT could not parse raised above: its fetch_data checks it.)
        self._in_hand = (_signing_keys(jwt.PyJWKSet.from_dict(data)), self._last_at)
        return data

    def key_in_hand(self, token: str, *, stale: bool) -> jwt.PyJWK | None:
        """The key for ``token``'s kid from the last set fetched, with no I/O: while that set
        is within its lifespan (PyJWT's client would not fetch either), or with ``stale``
        within the one more lifespan an outage is served; None: ask the client."""
        keys, fetched_at = self._in_hand
        limit = self._stale_seconds if stale else self._lifespan
        if time.monotonic() - fetched_at >= limit:
            return None
        return keys.get(_kid(token))


class _KeyFile:
    """A JWKS document in a file: the keys by ``kid``, read again when one is missing."""

    #: Shortest time between two reads of the file (a flood of unknown kids reads it once).
    REREAD_SECONDS = 1.0

    def __init__(self, path: Path, max_keys: int) -> None:
        self._path = path
        self._max_keys = max_keys
        self._keys: dict[str, jwt.PyJWK] = {}
        self._read_at = float("-inf")

    def _read(self) -> None:
        self._read_at = time.monotonic()
        key_set = jwt.PyJWKSet.from_json(self._path.read_text())
        self._keys = {key.key_id: key for key in key_set.keys[: self._max_keys] if key.key_id}

    def key_in_hand(self, token: str, *, stale: bool) -> jwt.PyJWK | None:
        """The key for ``token``'s kid if the file read last has it (None: ask
        :meth:`get_signing_key_from_jwt`, which reads the file again)."""
        return self._keys.get(_kid(token))

    def get_signing_key_from_jwt(self, token: str) -> jwt.PyJWK:
        """The key the token's ``kid`` names (called in a worker thread)."""
        kid = jwt.get_unverified_header(token).get("kid")
        if kid not in self._keys and time.monotonic() - self._read_at >= self.REREAD_SECONDS:
            try:
                self._read()
            except (OSError, jwt.PyJWTError) as error:
                raise jwt.PyJWKClientConnectionError(f"cannot read the key set: {error}") from None
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise jwt.PyJWKClientError("no key for this kid")
        return key


def _kid(token: str) -> str:
    """The ``kid`` of ``token``'s header, unverified ("" if it has none or is malformed)."""
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError:
        return ""
    return kid if isinstance(kid, str) else ""


def _signing_keys(key_set: jwt.PyJWKSet) -> dict[str, jwt.PyJWK]:
    """The keys of ``key_set`` a token may be signed with, by kid, as PyJWT's client picks
    them (``use`` ``sig`` or none, and a kid; of two with one kid, the first)."""
    keys: dict[str, jwt.PyJWK] = {}
    for key in key_set.keys:
        if key.key_id and key.public_key_use in ("sig", None):
            keys.setdefault(key.key_id, key)
    return keys


def mint(
    secret: str,
    sub: str,
    grant: dict[str, Any],
    *,
    ttl_seconds: float,
    audience: str | None = None,
    issuer: str | None = None,
    algorithm: str = "HS256",
) -> str:
    """A token signed with ``secret`` (for development: ``triorelay token``)."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + int(ttl_seconds), CLAIM: grant}
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm=algorithm)
