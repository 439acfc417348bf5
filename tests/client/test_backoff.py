"""Reconnection delays: exponential ceilings, capped, with full jitter."""

from __future__ import annotations

from typing import Any

import pytest

from triorelay.client.backoff import Backoff


def test_ceiling_doubles_from_initial_up_to_the_cap() -> None:
    """The ceiling starts at initial_seconds, doubles per attempt, and stops at max_seconds."""
    backoff = Backoff(initial_seconds=0.05, max_seconds=1.0)
    ceilings = [backoff.ceiling_seconds(attempt) for attempt in range(8)]
    assert ceilings == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])


def test_ceiling_of_a_huge_attempt_is_the_cap() -> None:
    """An attempt count from days of retrying neither overflows nor passes the cap."""
    assert Backoff(max_seconds=30.0).ceiling_seconds(10**6) == 30.0


def test_delay_is_the_ceiling_scaled_by_the_random_draw() -> None:
    """Full jitter: the delay is uniform between 0 and the ceiling (here, exact draws)."""
    draws = iter([0.0, 0.5, 0.999])
    backoff = Backoff(initial_seconds=1.0, max_seconds=8.0, random=lambda: next(draws))
    assert [backoff.delay_seconds(3) for _ in range(3)] == pytest.approx([0.0, 4.0, 7.992])


def test_default_delays_stay_within_their_ceiling() -> None:
    """With the real random source, every delay lies in [0, ceiling)."""
    backoff = Backoff()
    for attempt in range(20):
        assert 0 <= backoff.delay_seconds(attempt) < backoff.ceiling_seconds(attempt)


@pytest.mark.parametrize(
    "kwargs",
    [{"initial_seconds": 0}, {"initial_seconds": 2, "max_seconds": 1}, {"multiplier": 0.5}],
)
def test_bad_parameters_are_refused(kwargs: dict[str, Any]) -> None:
    """A zero start, a start past the cap or a shrinking multiplier is a ValueError."""
    with pytest.raises(ValueError, match="Backoff"):
        Backoff(**kwargs)
