"""The Origin check: same origin, no origin, allowlisted origins, and the rest."""

from __future__ import annotations

import pytest

from triorelay.auth.origins import origin_allowed, parse_origin_patterns

ALLOWED = parse_origin_patterns(["https://app.example.com", "https://*.example.org"])


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        (None, "relay.example.com", True),  # not a browser
        ("https://relay.example.com", "relay.example.com", True),  # same origin
        ("http://127.0.0.1:8000", "127.0.0.1:8000", True),
        ("http://127.0.0.1:9000", "127.0.0.1:8000", False),  # another port
        ("https://evil.example", "relay.example.com", False),
        ("null", "relay.example.com", False),
        ("https://app.example.com", "relay.example.com", True),  # allowlisted
        ("http://app.example.com", "relay.example.com", False),  # not its scheme
        ("https://a.b.example.org", "relay.example.com", True),  # pattern
        ("https://example.org", "relay.example.com", False),  # the pattern needs a label
        ("https://evilexample.org", "relay.example.com", False),
        ("https://app.example.com/path", "relay.example.com", False),  # not an origin
        ("not an origin", "relay.example.com", False),
    ],
)
def test_origin_decisions(origin: str | None, host: str, allowed: bool) -> None:
    """Each Origin / Host pair is let in or refused as documented."""
    assert origin_allowed(origin, host, ALLOWED) is allowed


@pytest.mark.parametrize(
    "bad", ["example.com", "https://*.", "ftp://x.example", "https://a.*.example", "https://x/p"]
)
def test_malformed_allowed_origins_fail(bad: str) -> None:
    """A malformed allowed_origins entry is a ValueError naming it."""
    with pytest.raises(ValueError, match="allowed_origins"):
        parse_origin_patterns([bad])
