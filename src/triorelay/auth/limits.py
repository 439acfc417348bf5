"""Per-client limits: connections at once, and publish rates. Pure, no I/O."""

from __future__ import annotations

from collections import OrderedDict

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

    def _level_at(self, now: float) -> float:
        """What the bucket holds at ``now``: refilled since the last take, up to ``burst``."""
        return min(self.burst, self._level + (now - self._updated) * self.rate)

    def can_take(self, amount: float, now: float) -> bool:
        """Whether :meth:`take` would succeed now (nothing is spent)."""
        return amount <= self._level_at(now)

    def take(self, amount: float, now: float) -> bool:
        level = self._level_at(now)
        self._updated = now
        if amount > level:
            self._level = level
            return False
        self._level = level - amount
        return True


class ClientRates:
    """A publish rate per client, for publishes that have no connection of their own to count
    them (HTTP): ``messages_per_second`` and ``bytes_per_second``, each a token bucket holding
    one second's worth, as a producer connection's.

    A client is what :meth:`~triorelay.auth.access.Access.client_key` says (its token's
    ``sub``, else its address). The table is bounded: a client unseen for a second has full
    buckets again, so it is dropped when the table is next pruned, and past ``max_clients``
    the least recently seen goes first (it starts again with full buckets).
    """

    def __init__(self, messages_per_second: float, bytes_per_second: float, max_clients: int):
        self.messages_per_second = messages_per_second
        self.bytes_per_second = bytes_per_second
        self.max_clients = max_clients
        # client -> (its buckets, when it was last seen), least recently seen first.
        self._clients: OrderedDict[str, tuple[TokenBucket, TokenBucket, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._clients)

    def take(self, client: str, size: int, now: float) -> bool:
        """Count one message of ``size`` bytes from ``client`` at ``now`` (trio's clock);
        False, and nothing counted, when it is over either rate."""
        entry = self._clients.pop(client, None)
        if entry is None:
            self._prune(now)
            messages = TokenBucket(self.messages_per_second, now)
            data = TokenBucket(self.bytes_per_second, now)
        else:
            messages, data, _ = entry
        self._clients[client] = (messages, data, now)
        if not messages.can_take(1, now) or not data.can_take(size, now):
            return False
        messages.take(1, now)
        data.take(size, now)
        return True

    def _prune(self, now: float) -> None:
        """Drop the clients whose buckets are full again, and the least recently seen past
        ``max_clients - 1`` (room for one more)."""
        clients = self._clients
        while clients:
            oldest = next(iter(clients))
            if len(clients) < self.max_clients and now - clients[oldest][2] < 1.0:
                return
            del clients[oldest]
