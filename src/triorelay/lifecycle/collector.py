"""How often CPython's cyclic garbage collector scans every object, with thousands of connections.

CPython 3.11 collects its oldest generation (a *full* collection: every tracked object in the
process) once the middle one has been collected ``threshold2`` times (10 by default) and the
objects that reached the oldest since the last full collection are a quarter of those there.
Each connection holds a few hundred tracked objects for its whole life, so while clients
connect (a reconnect storm after a restart) full collections come one after another, each
scanning every connection's objects and pausing the event loop meanwhile: measured here, 3,000
connections set up on one core cost 0.61-0.63 ms of CPU each, with five or six full
collections of about 160 ms each, against 0.31 ms with ``threshold2`` at 100 and none in the
ramp (issue #15's connection set-up; ``docs/topics/profile.md``); at 1,000 (the default), 8,000
producers set up 0.46-0.50 ms each against 0.58-0.64 ms at 100. CPython 3.11 to 3.13: the
incremental collector of 3.14 has no third threshold, and this setting does nothing there.
Young objects are still collected as often as before; cyclic garbage that lived long enough
to reach the oldest generation waits longer. A closed WebSocket read through the inbound tap
(as the relay's worker reads) is not such garbage: its
objects are freed by reference counting when it ends (the cycles among them are broken then;
``tests/lifecycle/test_collector.py`` checks nine ways a connection ends with the collector off),
so closed connections do not pile up between full collections: 2,000 connections opened and
closed ten times in a row left the server's RSS within 1.2 MB of the first round.

:func:`pace_full_collections` sets ``threshold2`` while the relay serves
(``gc_full_collection_threshold``) and gives back a function that puts the thresholds it found
back once the last relay of the process stops, so apps stopped in a process that goes on
(tests, an embedding program) leave them as they found them.
"""

from __future__ import annotations

import gc
from collections.abc import Callable


class _Pacing:
    """The thresholds found when the first relay of the process started pacing, and the
    paces of the relays serving now: the latest one applies, and when the last one stops the
    thresholds found are put back, whatever order they stop in."""

    def __init__(self) -> None:
        self.found: tuple[int, int, int] = gc.get_threshold()
        #: Each serving relay's pace, by a token of its own, in start order.
        self.paces: dict[object, int] = {}

    def start(self, threshold: int) -> Callable[[], None]:
        if not self.paces:
            self.found = gc.get_threshold()
        token = object()
        self.paces[token] = threshold
        self._apply()

        def stop() -> None:
            if self.paces.pop(token, None) is not None:
                self._apply()

        return stop

    def _apply(self) -> None:
        first, second, _ = gc.get_threshold()  # only the third is ours
        latest = next(reversed(self.paces.values()), self.found[2])
        gc.set_threshold(first, second, latest)


_pacing = _Pacing()


def pace_full_collections(threshold: int | None) -> Callable[[], None]:
    """Collect the oldest generation at most once per ``threshold`` collections of the middle
    one (``None``: leave the interpreter's thresholds alone); return what restores them (once
    every relay that paces them has called its own)."""
    if threshold is None:
        return lambda: None
    return _pacing.start(threshold)
