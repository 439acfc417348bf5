"""Route tests run twice: on Hypercorn's fast path, and on plain ASGI (the fallback).

A module opts in with ``pytestmark = pytest.mark.both_paths``; a test in it that checks what
only the fast path does (pings, a frame refused on its header) says
``@pytest.mark.fast_path_only`` and runs once.
"""

from __future__ import annotations

from typing import Any

import pytest

from triorelay.compat import hypercorn as compat

PATHS = ("fast path", "plain ASGI")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("both_paths") is None:
        return
    paths = PATHS[:1] if metafunc.definition.get_closest_marker("fast_path_only") else PATHS
    metafunc.fixturenames.append("asgi_path")
    metafunc.parametrize("asgi_path", paths, indirect=True)


@pytest.fixture
def asgi_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """On "plain ASGI", the compat helpers decline, as with a Hypercorn they do not know."""
    path: str = request.param
    if path == "plain ASGI":

        def decline(*args: Any, **kwargs: Any) -> None:
            return None

        monkeypatch.setattr(compat, "tap_inbound", decline)
        monkeypatch.setattr(compat, "open_direct", decline)
    return path
