"""Per-client limits: connections at once, and a producer's publish rate. Pure, no I/O."""

from __future__ import annotations

from triorelay.errors import TooManyConnections


class ConnectionLimits:
    """Counts WebSocket connections, in all and per client; refuses past either bound.

    A client is its token's ``sub``, else its address. Per-client counts exist only while the
    client has connections, so the table is bounded by ``max_total`` entries.
    """

    def __init__(self, max_total: int, max_per_client: int) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self.total = 0
        self._per_client: dict[str, int] = {}

    def count(self, client: str) -> int:
        return self._per_client.get(client, 0)

    def hold(self, client: str) -> Held:
        """One connection of ``client`` for the ``with`` block; entering raises
        TooManyConnections past either bound."""
        return Held(self, client)

    def _take(self, client: str) -> None:
        held = self._per_client.get(client, 0)
        if self.total >= self.max_total:
            raise TooManyConnections(
                f"the relay holds its maximum of {self.max_total} connections: try again later"
            )
        if held >= self.max_per_client:
            raise TooManyConnections(
                f"this client holds its maximum of {self.max_per_client} connections"
            )
        self.total += 1
        self._per_client[client] = held + 1

    def _give_back(self, client: str) -> None:
        self.total -= 1
        left = self._per_client[client] - 1
        if left:
            self._per_client[client] = left
        else:
            del self._per_client[client]


class Held:
    """A connection counted by :meth:`ConnectionLimits.hold` (a small object, not a generator:
    one lives as long as each connection)."""

    __slots__ = ("_client", "_limits")

    def __init__(self, limits: ConnectionLimits, client: str) -> None:
        self._limits = limits
        self._client = client

    def __enter__(self) -> None:
        self._limits._take(self._client)

    def __exit__(self, *exc_info: object) -> None:
        self._limits._give_back(self._client)


class TokenBucket:
    """``rate`` units per second, holding at most ``burst`` (a second's worth by default).

    :meth:`take` spends what a message costs at time ``now`` (trio's clock); False when the
    bucket does not hold enough: the sender is over its rate.
    """

    __slots__ = ("_level", "_updated", "burst", "rate")

    def __init__(self, rate: float, now: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else rate
        self._level = self.burst
        self._updated = now

    def take(self, amount: float, now: float) -> bool:
        level = min(self.burst, self._level + (now - self._updated) * self.rate)
        self._updated = now
        if amount > level:
            self._level = level
            return False
        self._level = level - amount
        return True
