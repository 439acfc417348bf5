"""The garbage collector's pace while a relay serves: full collections at most once per
``gc_full_collection_threshold`` collections of the middle generation, the interpreter's
thresholds back once the last relay stops."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.conftest import start_server
from triorelay.lifecycle.collector import _Pacing, pace_full_collections

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def thresholds() -> Iterator[tuple[int, int, int]]:
    """The interpreter's thresholds before the test, put back after it whatever happens."""
    found = gc.get_threshold()
    yield found
    gc.set_threshold(*found)


def test_only_the_oldest_generation_is_paced_and_put_back(
    thresholds: tuple[int, int, int],
) -> None:
    """The third threshold changes, the first two do not; restoring twice is restoring once."""
    restore = _Pacing().start(123)
    assert gc.get_threshold() == (thresholds[0], thresholds[1], 123)
    restore()
    restore()
    assert gc.get_threshold() == thresholds
    pace_full_collections(None)()
    assert gc.get_threshold() == thresholds


def test_the_last_relay_to_stop_puts_them_back_in_any_order(
    thresholds: tuple[int, int, int],
) -> None:
    """Relays pacing, stopped in any order: the latest still serving sets the pace, and the
    thresholds found before the first started come back with the last."""
    pacing = _Pacing()
    first, second, third = pacing.start(100), pacing.start(200), pacing.start(300)
    assert gc.get_threshold()[2] == 300
    first()
    assert gc.get_threshold()[2] == 300
    third()
    assert gc.get_threshold()[2] == 200
    second()
    assert gc.get_threshold() == thresholds


async def test_a_serving_relay_paces_full_collections(
    tmp_path: Path, thresholds: tuple[int, int, int]
) -> None:
    """While a relay serves, the setting is the third threshold; once it has stopped, the
    thresholds are what they were before it started."""
    async with trio.open_nursery() as nursery:
        relay = await start_server(
            nursery, gc_full_collection_threshold=321, upload_dir=tmp_path / "uploads"
        )
        assert gc.get_threshold() == (thresholds[0], thresholds[1], 321)
        relay.stop.set()
    assert gc.get_threshold() == thresholds
