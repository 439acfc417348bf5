"""Reconnection delays: exponential backoff with full jitter. Pure, no I/O."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long to wait before reconnection attempt ``attempt`` (0 for the first retry).

    The ceiling starts at ``initial_seconds`` and is multiplied by ``multiplier`` at each
    failed attempt, up to ``max_seconds``; the delay is drawn uniformly between 0 and the
    ceiling ("full jitter"), so that many clients cut off at once (a relay restart) do not
    all come back at the same instant. A subscription starts again from attempt 0 after a
    connection that delivered its ``subscribed`` frame.

    ``random`` returns a float in [0, 1): the default is :func:`random.random`; tests pass
    their own to get exact delays.
    """

    initial_seconds: float = 0.05
    max_seconds: float = 10.0
    multiplier: float = 2.0
    random: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.initial_seconds <= self.max_seconds:
            raise ValueError("Backoff needs 0 < initial_seconds <= max_seconds")
        if self.multiplier < 1:
            raise ValueError("Backoff needs multiplier >= 1")

    def ceiling_seconds(self, attempt: int) -> float:
        """The longest delay of attempt ``attempt``: ``initial * multiplier**attempt``,
        capped at ``max_seconds`` (computed without overflow for any ``attempt``)."""
        try:
            ceiling = self.initial_seconds * self.multiplier**attempt
        except OverflowError:  # a subscription that has retried for days
            return self.max_seconds
        return min(ceiling, self.max_seconds)

    def delay_seconds(self, attempt: int) -> float:
        """The delay before attempt ``attempt``: uniform in ``[0, ceiling_seconds(attempt))``."""
        return self.ceiling_seconds(attempt) * self.random()
