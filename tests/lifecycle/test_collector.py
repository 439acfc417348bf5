"""The garbage collector's pace while a relay serves: full collections at most once per
``gc_full_collection_threshold`` collections of the middle generation, the interpreter's
thresholds back once the last relay stops; and a closed connection freed without it."""

from __future__ import annotations

import gc
import json
import weakref
from collections.abc import Awaitable, Callable, Container, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import wsproto.events as ws_events
from hypercorn.protocol.ws_stream import WSStream

from tests.auth.keys import SECRET, token
from tests.conftest import StartRelay, start_server
from tests.helpers import RawWebSocket, RunningRelay, receive_n, wait_until
from tests.upstream import echo, start_upstream
from triorelay import framing
from triorelay.compat.hypercorn.reads import ReadLoop
from triorelay.lifecycle.collector import _Pacing, pace_full_collections
from triorelay.routes.session import Session

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


# A closed connection is freed by reference counting: the collector's pace above is safe only
# if no connection's objects wait for a full collection once it has ended.

_SERVER_MODULES = ("hypercorn", "triorelay")


def _server_garbage(before: Container[int] = frozenset()) -> list[str]:
    """The relay's and Hypercorn's objects only the cyclic collector would free, by type;
    none of those whose ids are ``before`` (alive then: another test's, kept by its
    traceback)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = {
            f"{type(item).__module__}.{type(item).__qualname__}"
            for item in gc.garbage
            if type(item).__module__.split(".")[0] in _SERVER_MODULES and id(item) not in before
        }
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    return sorted(found)


class _Watched:
    """Weak references to open connections' server objects (Hypercorn's reader, WebSocket
    stream and its wsproto connection and frame protocol, the relay's session), and an event
    set once the last of them is freed."""

    _KINDS = (ReadLoop, WSStream, Session)

    def __init__(self) -> None:
        self.refs: list[weakref.ref[Any]] = []
        self.freed = trio.Event()
        self._before: weakref.WeakSet[Any] = weakref.WeakSet(self._alive())

    def _alive(self) -> list[Any]:
        found = [item for item in gc.get_objects() if isinstance(item, self._KINDS)]
        connections = [item.connection for item in found if isinstance(item, WSStream)]
        return found + connections + [connection._proto for connection in connections]

    def track(self) -> None:
        """Watch every such object alive now that was not when the test began, and each
        stream's wsproto connection and frame protocol (a cycle there holds no object of the
        relay's or Hypercorn's)."""
        self.refs += [
            weakref.ref(item, self._one_freed) for item in self._alive() if item not in self._before
        ]

    def _one_freed(self, _: weakref.ref[Any]) -> None:
        if all(ref() is None for ref in self.refs):
            self.freed.set()

    def alive(self) -> list[str]:
        return sorted({type(item).__name__ for ref in self.refs if (item := ref()) is not None})


async def _publish_and_consume(relay: RunningRelay, watched: _Watched) -> None:
    async with relay.websocket("/ws/consumer/c") as consumer:
        async with relay.websocket("/ws/producer/c") as producer:
            watched.track()
            for i in range(20):
                await producer.send_message(f"m{i}")
            assert await receive_n(consumer, 20) == [f"m{i}" for i in range(20)]


async def _consumer_vanishes(relay: RunningRelay, watched: _Watched) -> None:
    client = await RawWebSocket.connect(relay.port, "/ws/consumer/v", 65536)
    async with relay.websocket("/ws/producer/v") as producer:
        await producer.send_message("hi")
        assert await client.read_messages(1) == ["hi"]
        watched.track()
        client.close()  # no close frame


async def _slow_consumer_closed_1013(relay: RunningRelay, watched: _Watched) -> None:
    client = await RawWebSocket.connect(relay.port, "/ws/consumer/s")  # never reads
    async with relay.websocket("/ws/producer/s?ack=id") as producer:
        watched.track()
        for i in range(1, 400):  # 25 MiB: more than the socket buffers and the relay's hold
            await producer.send_message("x" * 65536)
            assert json.loads(await producer.get_message()) == {"id": i}
            if (await relay.channel("s"))["disconnected_slow"]:
                break
        else:
            raise AssertionError("the stalled consumer was never closed")
    assert (await client.wait_for_close())[0] == 1013
    client.close()


async def _fragments_over_the_limit_1009(relay: RunningRelay, watched: _Watched) -> None:
    client = await RawWebSocket.connect(relay.port, "/ws/producer/f", 65536)
    watched.track()
    fragment = ws_events.TextMessage(data="x" * 600, message_finished=False)
    await client.send_events(fragment, fragment)  # 1,200 bytes against 1,024: in wsproto
    assert (await client.wait_for_close())[0] == 1009
    client.close()


async def _compressed(relay: RunningRelay, watched: _Watched) -> None:
    client = await RawWebSocket.connect(relay.port, "/ws/echo", 65536, deflate=True)
    watched.track()
    await client.send_text("y" * 500)
    assert await client.read_messages(1) == ["y" * 500]
    client.close()


async def _proxied(relay: RunningRelay, watched: _Watched) -> None:
    async with relay.websocket("/ws/proxy/up") as ws:
        watched.track()
        await ws.send_message("hi")
        assert await ws.get_message() == "hi"


async def _job_acked(relay: RunningRelay, watched: _Watched) -> None:
    async with relay.websocket("/ws/consumer/jobs", subprotocols=[framing.SUBPROTOCOL]) as worker:
        subscribed = framing.decode(await worker.get_message())
        assert isinstance(subscribed, framing.Control)
        async with relay.websocket("/ws/producer/jobs") as producer:
            watched.track()
            await producer.send_message("job")
            job = framing.decode(await worker.get_message())
            assert isinstance(job, framing.Job)
            await worker.send_message(framing.ack(job.delivery_id))

            async def acked() -> bool:
                return bool((await relay.channel("jobs"))["jobs"]["acked"])

            await wait_until(acked)  # the ack has no reply


async def _with_a_token(relay: RunningRelay, watched: _Watched) -> None:
    grant = {"channels": {"t": ["publish", "subscribe"]}}
    headers = [("Authorization", f"Bearer {token(grant=grant)}")]
    async with relay.websocket("/ws/consumer/t", extra_headers=headers) as consumer:
        async with relay.websocket("/ws/producer/t", extra_headers=headers) as producer:
            watched.track()
            await producer.send_message("hi")
            assert await consumer.get_message() == "hi"


async def _resumed(relay: RunningRelay, watched: _Watched) -> None:
    path, framed = "/ws/consumer/r", [framing.SUBPROTOCOL]
    async with relay.websocket(path, subprotocols=framed) as consumer:
        subscribed = framing.decode(await consumer.get_message())
        assert isinstance(subscribed, framing.Control)
        epoch = subscribed.fields["epoch"]
    async with relay.websocket("/ws/producer/r") as producer:
        await producer.send_message("missed")
    async with relay.websocket(f"{path}?since={epoch}:0", subprotocols=framed) as consumer:
        watched.track()
        assert framing.decode(await consumer.get_message()).fields["replayed"] == 1  # type: ignore[union-attr]
        missed = framing.decode(await consumer.get_message())
        assert isinstance(missed, framing.Message)
        assert missed.payload == "missed"


Scenario = Callable[[RunningRelay, _Watched], Awaitable[None]]
"""Runs connections to their end, having them watched while they are open."""

_PATHS: dict[str, tuple[Scenario, dict[str, Any]]] = {
    "published and consumed, closed by the clients": (_publish_and_consume, {}),
    "a consumer gone without a close frame": (_consumer_vanishes, {}),
    "a slow consumer closed 1013 by the hub": (
        _slow_consumer_closed_1013,
        {
            "consumer_buffer_messages": 2,
            "max_message_bytes": 65536,
            "close_timeout_seconds": 30,
            "graceful_timeout_seconds": 40,
        },
    ),
    "fragments over the limit, closed 1009 by Hypercorn": (
        _fragments_over_the_limit_1009,
        {"max_message_bytes": 1024},
    ),
    "compressed": (_compressed, {"compression": True}),
    "proxied": (_proxied, {}),
    "a job consumed and acked": (
        _job_acked,
        {"channels": {"jobs": {"mode": "queue", "ack": "explicit"}}},
    ),
    "a consumer and a producer with a token": (_with_a_token, {"auth_hmac_secret": SECRET}),
    "a consumer resumed from its position": (_resumed, {}),
}


@pytest.mark.parametrize("path", list(_PATHS))
async def test_a_closed_connection_is_freed_without_the_cyclic_collector(
    path: str, collector_off: None, start_relay: StartRelay, nursery: trio.Nursery
) -> None:
    """With the collector off, every server object of a connection that ended goes by
    reference counting, and the relay's and Hypercorn's leave no cyclic garbage behind."""
    scenario, settings = _PATHS[path]
    before = {id(item) for item in gc.get_objects()}
    upstream = await start_upstream(nursery, echo)
    relay = await start_relay(proxy_upstreams={"up": upstream.url}, **settings)
    _server_garbage()  # what starting the relay left is not this test's
    watched = _Watched()
    await scenario(relay, watched)
    assert watched.refs, "the scenario watched no connection"
    with trio.move_on_after(10):  # the server ends its side of each in its own time
        await watched.freed.wait()
    assert watched.alive() == []
    assert _server_garbage(before) == []
