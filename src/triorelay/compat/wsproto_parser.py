"""A closed WebSocket's frame parser, let go by reference counting (wsproto 1.3.2).

``FrameProtocol.__init__`` keeps its parsing generator on itself (``self._parse_more =
self._parse_more_gen()``, ``wsproto/frame_protocol.py``), and the suspended generator's frame
refers back to the protocol: a reference cycle. Once the connection has ended, the protocol,
its frame and message decoders and their buffers (seven tracked objects, about 1 KB of RSS a
connection) wait for a full collection of the cyclic collector, which the relay makes rare
(``lifecycle/collector.py``): measured here, 2,000 connections opened and closed at a time with
``gc_full_collection_threshold`` at 1,000 grew the server's RSS by 1.9 MB a round, round after
round. No upstream issue was found for it. :func:`release_parser` closes the generator and lets
it go, which breaks the cycle; ``tests/compat/test_wsproto_parser.py`` checks both the cycle in
the pinned version and its release. It is called for connections the inbound tap reads
(``compat/hypercorn/reads.py``); elsewhere (plain ASGI, HTTP/2) the cycle stays until a full
collection.
"""

from __future__ import annotations

from types import GeneratorType
from typing import Any


def release_parser(connection: Any) -> None:
    """Close the frame parser of wsproto ``connection`` (a ``Connection`` that has ended):
    it parses nothing more, and no reference cycle is left. Does nothing for anything else."""
    proto: Any = getattr(connection, "_proto", None)
    parse_more = getattr(proto, "_parse_more", None)
    if isinstance(parse_more, GeneratorType):
        parse_more.close()
        # From CPython 3.12 on, closing a generator that never started (the common case
        # here: the inbound tap parses simple frames itself) leaves its frame, and its
        # reference to the protocol, in place: the generator itself goes too.
        proto._parse_more = iter(())
