"""compat/wsproto_parser.py: the assumption (wsproto 1.3.2 keeps its frame parser in a reference
cycle) and the workaround (closing the parser's generator breaks it)."""

from __future__ import annotations

import weakref

import pytest
import wsproto
from wsproto.connection import Connection, ConnectionType
from wsproto.events import TextMessage

from triorelay.compat.wsproto_parser import release_parser

pytestmark = pytest.mark.timeout(10)


def _used_server() -> Connection:
    """A server-side wsproto connection that has parsed a client's message."""
    client, server = Connection(ConnectionType.CLIENT), Connection(ConnectionType.SERVER)
    server.receive_data(client.send(TextMessage(data="hi")))
    assert [type(event) for event in server.events()] == [TextMessage]
    return server


def test_the_pinned_wsproto_keeps_its_frame_parser_in_a_cycle(collector_off: None) -> None:
    """The assumption: with the collector off, an ended connection's frame protocol outlives
    the last reference to the connection. If an upgrade fixes this, the workaround can go."""
    assert wsproto.__version__ == "1.3.2"
    server = _used_server()
    proto = weakref.ref(server._proto)  # type: ignore[attr-defined]
    del server
    assert proto() is not None


def test_a_released_parser_goes_with_its_connection(collector_off: None) -> None:
    """Closed by release_parser, the frame protocol is freed by reference counting, and it
    parses nothing more."""
    server = _used_server()
    proto = weakref.ref(server._proto)  # type: ignore[attr-defined]
    release_parser(server)
    assert list(server._proto.received_frames()) == []  # type: ignore[attr-defined]
    del server
    assert proto() is None


def test_a_parser_that_never_ran_is_released_too(collector_off: None) -> None:
    """A connection that never parsed a frame with wsproto (the tap parsed them all): its
    frame protocol goes with it as well (closing alone would leave the generator's frame
    from CPython 3.12 on)."""
    server = Connection(ConnectionType.SERVER)
    proto = weakref.ref(server._proto)  # type: ignore[attr-defined]
    release_parser(server)
    assert list(server._proto.received_frames()) == []  # type: ignore[attr-defined]
    del server
    assert proto() is None


def test_anything_else_is_left_alone() -> None:
    """Not a wsproto connection (another server's stream, None): nothing happens."""
    release_parser(None)
    release_parser(object())
