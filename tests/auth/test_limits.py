"""Per-client limits: connections at once, and a token bucket for publish rates."""

from __future__ import annotations

import pytest

from triorelay.auth.limits import ClientRates, ConnectionLimits, TokenBucket
from triorelay.errors import TooManyConnections


def test_connections_per_client_at_and_past_the_limit() -> None:
    """A client holds up to its maximum; the next is refused; others are not affected."""
    limits = ConnectionLimits(max_total=10, max_per_client=2)
    with limits.hold("a"), limits.hold("a"):
        with pytest.raises(TooManyConnections, match="this client"), limits.hold("a"):
            pass  # pragma: no cover
        with limits.hold("b"):
            assert limits.total == 3
    assert limits.total == 0
    assert limits.count("a") == 0


def test_connections_in_total_at_and_past_the_limit() -> None:
    """The relay holds up to max_total connections; past it every client is refused."""
    limits = ConnectionLimits(max_total=2, max_per_client=5)
    with limits.hold("a"), limits.hold("b"):
        with pytest.raises(TooManyConnections, match="the relay"), limits.hold("c"):
            pass  # pragma: no cover
    with limits.hold("c"):
        assert limits.total == 1


def test_token_bucket_spends_and_refills() -> None:
    """A second's worth can be spent at once; then only what the rate refills."""
    bucket = TokenBucket(rate=10, now=0.0)
    assert bucket.take(10, now=0.0)
    assert not bucket.take(1, now=0.0)
    assert bucket.take(5, now=0.5)
    assert not bucket.take(1, now=0.5)
    assert bucket.take(10, now=100.0)  # refills up to the burst, not beyond
    assert not bucket.take(1, now=100.0)


def test_client_rates_count_each_client_on_its_own_and_refill() -> None:
    """Each client has its own second's worth of messages and bytes; a refused publish
    spends nothing (neither bucket); a second later the client may publish again."""
    rates = ClientRates(messages_per_second=2, bytes_per_second=100, max_clients=10)
    assert rates.take("sub:alice", 10, now=0.0)
    assert rates.take("sub:alice", 10, now=0.0)
    assert not rates.take("sub:alice", 10, now=0.1)  # over the message rate
    assert rates.take("sub:bob", 90, now=0.1)  # another client
    assert not rates.take("sub:bob", 20, now=0.1)  # over the byte rate: no message spent
    assert rates.take("sub:bob", 10, now=0.1)
    assert rates.take("sub:alice", 10, now=0.6)  # half a second: one message back


def test_client_rates_hold_a_bounded_table() -> None:
    """Clients unseen for a second are dropped (their buckets are full again anyway); past
    max_clients the least recently seen goes, and comes back with full buckets."""
    rates = ClientRates(messages_per_second=1, bytes_per_second=1000, max_clients=3)
    for client in ("a", "b", "c"):
        assert rates.take(client, 1, now=0.0)
    assert len(rates) == 3
    assert rates.take("d", 1, now=0.5)  # "a", the least recently seen, makes room
    assert len(rates) == 3
    assert rates.take("a", 1, now=0.5)  # forgotten: full buckets again ("b" goes)
    assert not rates.take("c", 1, now=0.5)  # still counted
    assert rates.take("e", 1, now=2.0)  # every other client unseen for a second: dropped
    assert len(rates) == 1
