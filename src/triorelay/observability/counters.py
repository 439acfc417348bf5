"""Relay-wide counters that outlive channels and connections. Pure, no I/O.

Counted once per connection (when it opens, when it ends) or per refusal, never per message,
so they cost the message path nothing. Every label takes a bounded set of values: roles are
the relay's own, a close code outside ``CloseCode`` counts as ``other``, refusals by status and the
reason the code gave.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from triorelay.errors import CloseCode

_KNOWN_CODES = frozenset(int(code) for code in CloseCode)


def close_label(code: int | None, disconnected: bool) -> str:
    """How a connection ended, as a label: ``client`` (it left first), a close code the relay
    knows, or ``other`` (a code relayed as it came, from a proxied peer)."""
    if disconnected or code is None:
        return "client"
    return str(code) if code in _KNOWN_CODES else "other"


@dataclass
class RelayCounters:
    """Connections by role (open now, and ended by role and close), refusals by status, and
    the messages and bytes of the connections that ended, by role and direction."""

    open: Counter[str] = field(default_factory=Counter)
    ended: Counter[tuple[str, str]] = field(default_factory=Counter)
    refused: Counter[tuple[int, str]] = field(default_factory=Counter)
    messages: Counter[tuple[str, str]] = field(default_factory=Counter)
    bytes: Counter[tuple[str, str]] = field(default_factory=Counter)

    def opened(self, role: str) -> None:
        self.open[role] += 1

    def closed(
        self, role: str, close: str, messages: tuple[int, int], size: tuple[int, int]
    ) -> None:
        """A connection of ``role`` ended as ``close``, having moved ``messages`` and ``size``
        (in, out)."""
        self.open[role] -= 1
        self.ended[(role, close)] += 1
        self.messages[(role, "in")] += messages[0]
        self.messages[(role, "out")] += messages[1]
        self.bytes[(role, "in")] += size[0]
        self.bytes[(role, "out")] += size[1]

    def refusal(self, status: int, reason: str = "other") -> None:
        """A handshake or request was refused with HTTP ``status`` (401, 403, 503, ...) for
        ``reason`` (:attr:`RequestError.label <triorelay.errors.TriorelayError.label>`)."""
        self.refused[(status, reason)] += 1
