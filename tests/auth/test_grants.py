"""Rights in a token's claim: their shape, and what they allow."""

from __future__ import annotations

from typing import Any

import pytest

from triorelay.auth.grants import Grant, InvalidGrant


def test_channel_rights_follow_the_patterns_that_match() -> None:
    """A channel right is granted where a matching pattern lists it, nowhere else."""
    grant = Grant.parse({"channels": {"a.*": ["publish", "subscribe"], "pub.*": ["subscribe"]}})
    assert grant.allows_channel("publish", "a.x")
    assert grant.allows_channel("subscribe", "pub.news")
    assert not grant.allows_channel("publish", "pub.news")
    assert not grant.allows_channel("subscribe", "b.x")
    assert not grant.allows_channel("publish", "a")  # "a.*" does not match "a"


def test_endpoint_rights_are_granted_by_name() -> None:
    """Endpoint rights and proxy:<name> are granted exactly as listed."""
    grant = Grant.parse({"rights": ["admin", "proxy:default"]})
    assert grant.allows("admin")
    assert grant.allows("proxy:default")
    assert not grant.allows("proxy:other")
    assert not grant.allows("upload")


def test_no_claim_grants_nothing() -> None:
    """A token without the triorelay claim may do nothing."""
    grant = Grant.parse(None)
    assert not grant.allows("admin")
    assert not grant.allows_channel("subscribe", "x")


def test_everything_allows_every_right() -> None:
    """The grant of anonymous clients without a key allows every right on every channel."""
    grant = Grant.everything()
    assert grant.allows_channel("publish", "any.thing")
    assert grant.allows("proxy:whatever")
    assert grant.allows("admin")


@pytest.mark.parametrize(
    "claim",
    [
        [],
        {"channels": []},
        {"channels": {"a.*": ["read"]}},
        {"channels": {"a.*": "publish"}},
        {"rights": ["root"]},
        {"rights": ["proxy:"]},
        {"rights": "admin"},
        {"extra": 1},
    ],
)
def test_malformed_claims_are_refused(claim: Any) -> None:
    """An unknown right or a claim of the wrong shape is an InvalidGrant."""
    with pytest.raises(InvalidGrant):
        Grant.parse(claim)
