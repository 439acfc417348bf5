"""Per-client limits: connections at once, and a token bucket for publish rates."""

from __future__ import annotations

import pytest

from triorelay.auth.limits import ConnectionLimits, TokenBucket
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
