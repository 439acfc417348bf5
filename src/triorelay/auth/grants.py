"""Rights: what a client may do, per channel pattern and per endpoint. Pure, no I/O.

A token's ``triorelay`` claim (and the ``auth_anonymous`` setting) is a :class:`Grant`::

    {
      "channels": {"chat.*": ["publish", "subscribe"], "public.*": ["subscribe"]},
      "rights": ["admin", "upload", "download", "echo", "proxy:default"]
    }

- ``channels`` maps a glob pattern (as in ``TRIORELAY_CHANNELS``) to channel rights:
  ``publish`` (``/ws/producer``, ``POST /channels/{c}/messages``) and ``subscribe``
  (``/ws/consumer``, broadcast and queue channels alike).
- ``rights`` are the endpoint rights: ``admin`` (channel listing and statistics, ``/healthz``
  in full), ``upload`` (``/ws/upload``, the file flow of ``/ws``), ``download``
  (``GET /files/{id}``), ``echo`` (``/ws/echo``, the text flow of ``/ws``) and
  ``proxy:<upstream>`` for each proxy upstream name.

A channel right is granted when any pattern that matches the channel lists it.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Literal

ChannelRight = Literal["publish", "subscribe"]
CHANNEL_RIGHTS: frozenset[str] = frozenset({"publish", "subscribe"})
ENDPOINT_RIGHTS: frozenset[str] = frozenset({"admin", "upload", "download", "echo"})
PROXY_RIGHT_PREFIX = "proxy:"


class InvalidGrant(ValueError):
    """A grant that names an unknown right, or has the wrong shape."""


@dataclass(frozen=True, slots=True)
class Grant:
    """The rights of one client (see the module's docstring for the shape)."""

    channels: tuple[tuple[str, frozenset[str]], ...] = ()
    rights: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def everything(cls) -> Grant:
        """Every right on every channel: anonymous clients when no key is configured."""
        return _EVERYTHING

    @classmethod
    def parse(cls, claim: Any) -> Grant:
        """The grant a ``triorelay`` claim describes; raise :class:`InvalidGrant`."""
        if claim is None:
            return cls()
        if not isinstance(claim, dict) or set(claim) - {"channels", "rights"}:
            raise InvalidGrant('the triorelay claim is an object of "channels" and "rights"')
        channels = claim.get("channels", {})
        rights = claim.get("rights", [])
        if not isinstance(channels, dict) or not isinstance(rights, list):
            raise InvalidGrant('"channels" is an object of patterns, "rights" a list')
        parsed: list[tuple[str, frozenset[str]]] = []
        for pattern, granted in channels.items():
            if not isinstance(granted, list) or not set(granted) <= CHANNEL_RIGHTS:
                raise InvalidGrant(f"channel rights are a list of {sorted(CHANNEL_RIGHTS)}")
            parsed.append((str(pattern), frozenset(granted)))
        for right in rights:
            if not isinstance(right, str) or not (
                right in ENDPOINT_RIGHTS
                or (right.startswith(PROXY_RIGHT_PREFIX) and len(right) > len(PROXY_RIGHT_PREFIX))
            ):
                raise InvalidGrant(
                    f"unknown right {right!r}: rights are {sorted(ENDPOINT_RIGHTS)} "
                    "and proxy:<upstream>"
                )
        return cls(tuple(parsed), frozenset(rights))

    def allows_channel(self, right: ChannelRight, channel: str) -> bool:
        """True when a pattern matching ``channel`` lists ``right``."""
        if self is _EVERYTHING:
            return True
        return any(
            right in granted and fnmatch.fnmatchcase(channel, pattern)
            for pattern, granted in self.channels
        )

    def allows(self, right: str) -> bool:
        """True when ``right`` (an endpoint right, or ``proxy:<name>``) is granted."""
        return self is _EVERYTHING or right in self.rights


_EVERYTHING = Grant(
    channels=(("*", frozenset(CHANNEL_RIGHTS)),),
    rights=frozenset(ENDPOINT_RIGHTS | {PROXY_RIGHT_PREFIX + "*"}),
)
