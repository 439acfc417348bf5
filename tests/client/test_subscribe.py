"""subscribe() end to end, against the real relay: positions; resumes across server-side
closes (1013, 4401), a reset that moves the client to another relay, a partition, relay
restarts; what a lost history looks like; recover=required failing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.auth.keys import SECRET, token
from tests.conftest import StartRelay, start_server
from tests.helpers import RunningRelay
from tests.redis_server import RedisServer, TcpProxy
from tests.tcp_proxy import ForwardingProxy
from triorelay.client import (
    Backoff,
    Event,
    Position,
    ReceivedMessage,
    Reconnecting,
    RecoveryFailed,
    Subscribed,
    Subscription,
    publish,
    subscribe,
)
from triorelay.errors import CloseCode

pytestmark = pytest.mark.timeout(30)

GUARD_SECONDS = 15
FAST = Backoff(initial_seconds=0.005, max_seconds=0.05)


async def take(subscription: Subscription, count: int) -> list[ReceivedMessage]:
    return [await subscription.__anext__() for _ in range(count)]


class Recorder:
    """Collects a subscription's events and, with :func:`reading`, its messages, in order;
    ``await recorder.wait_for(kind, n)`` returns once ``n`` of ``kind`` came."""

    def __init__(self) -> None:
        self.items: list[Event | ReceivedMessage] = []
        self._changed = trio.Event()

    def __call__(self, item: Event | ReceivedMessage) -> None:
        self.items.append(item)
        self._changed.set()

    def of(self, kind: type[Any]) -> list[Any]:
        return [item for item in self.items if isinstance(item, kind)]

    @property
    def messages(self) -> list[ReceivedMessage]:
        return self.of(ReceivedMessage)

    async def wait_for(self, kind: type[Any], count: int = 1) -> None:
        while len(self.of(kind)) < count:
            self._changed = trio.Event()
            await self._changed.wait()


@asynccontextmanager
async def reading(subscription: Subscription, recorder: Recorder) -> AsyncIterator[None]:
    """Read ``subscription`` into ``recorder`` in a task of its own (so that events reach
    ``on_event`` while the test publishes), until the block ends."""
    async with trio.open_nursery() as nursery:

        async def read() -> None:
            async for message in subscription:
                recorder(message)

        nursery.start_soon(read)
        yield
        nursery.cancel_scope.cancel()


async def test_messages_come_with_the_offsets_publish_returned(relay: RunningRelay) -> None:
    """Each message's position is subscribed's epoch and the offset its publish returned."""
    recorder = Recorder()
    with trio.fail_after(GUARD_SECONDS):
        async with (
            subscribe(relay.ws_url, "news", on_event=recorder) as subscription,
            reading(subscription, recorder),
        ):
            await recorder.wait_for(Subscribed)  # a live subscription gets what follows
            offsets = await publish(relay.ws_url, "news", ["one", b"\x00two", "three"])
            await recorder.wait_for(ReceivedMessage, 3)
    (subscribed,) = recorder.of(Subscribed)
    epoch = subscribed.position.epoch
    got = recorder.messages
    assert [m.position for m in got] == [Position(epoch, offset) for offset in offsets]
    assert [m.payload for m in got] == ["one", b"\x00two", "three"]
    assert subscription.position == Position(epoch, offsets[-1])


async def test_a_later_subscription_resumes_from_position(relay: RunningRelay) -> None:
    """subscription.position given as since= to a new subscription: what was published in
    between is replayed, once."""
    recorder = Recorder()
    with trio.fail_after(GUARD_SECONDS):
        async with (
            subscribe(relay.ws_url, "log", on_event=recorder) as first,
            reading(first, recorder),
        ):
            await recorder.wait_for(Subscribed)
            await publish(relay.ws_url, "log", ["a", "b"])
            await recorder.wait_for(ReceivedMessage, 2)
        await publish(relay.ws_url, "log", ["c", "d"])
        async with subscribe(relay.ws_url, "log", since=first.position) as second:
            got = await take(second, 2)
            assert second.subscribed is not None
            assert (second.subscribed.recovered, second.subscribed.replayed) == (True, 2)
    assert [m.payload for m in got] == ["c", "d"]


async def test_resumes_after_the_relay_closes_the_connection(start_relay: StartRelay) -> None:
    """The relay closes the consumer at its token's expiry (4401); with a token provider
    the client reconnects and resumes: every message once, in order, across the close."""
    relay = await start_relay(auth_hmac_secret=SECRET, auth_leeway_seconds=0)
    grant = {"channels": {"feed": ["subscribe", "publish"]}}
    publisher_token = token(grant=grant)
    recorder = Recorder()

    def provider() -> str:
        return token(grant=grant, ttl=1)  # exp is in whole seconds: closed within 1-2 s

    with trio.fail_after(GUARD_SECONDS):
        async with (
            subscribe(
                relay.ws_url, "feed", token=provider, backoff=FAST, on_event=recorder
            ) as subscription,
            reading(subscription, recorder),
        ):
            await recorder.wait_for(Subscribed)
            await publish(relay.ws_url, "feed", ["m1", "m2"], token=publisher_token)
            await recorder.wait_for(Reconnecting)  # the relay closed it: token expired
            await publish(relay.ws_url, "feed", ["m3", "m4"], token=publisher_token)
            await recorder.wait_for(ReceivedMessage, 4)
    assert [m.payload for m in recorder.messages] == ["m1", "m2", "m3", "m4"]
    assert [m.position.offset for m in recorder.messages] == [1, 2, 3, 4]
    assert recorder.of(Reconnecting)[0].code == 4401
    assert recorder.of(Subscribed)[1].recovered


async def test_resumes_after_the_relay_closes_the_consumer(relay: RunningRelay) -> None:
    """The relay closes the consumer (1013, as a slow consumer under ``disconnect`` gets),
    with a message published just then: the client reconnects and resumes, every message
    once."""
    recorder = Recorder()
    with trio.fail_after(GUARD_SECONDS):
        async with (
            subscribe(relay.ws_url, "closing", on_event=recorder, backoff=FAST) as sub,
            reading(sub, recorder),
        ):
            await recorder.wait_for(Subscribed)
            await publish(relay.ws_url, "closing", ["1", "2"])
            await recorder.wait_for(ReceivedMessage, 2)
            (consumer,) = relay.relay.hub.consumers_of("closing")
            consumer.close(CloseCode.TRY_AGAIN_LATER, "consumer too slow")
            await publish(relay.ws_url, "closing", ["3"])
            await recorder.wait_for(Reconnecting)
            await publish(relay.ws_url, "closing", ["4"])
            await recorder.wait_for(ReceivedMessage, 4)
    assert [m.payload for m in recorder.messages] == ["1", "2", "3", "4"]
    assert [m.position.offset for m in recorder.messages] == [1, 2, 3, 4]
    closed = recorder.of(Reconnecting)[0]
    assert (closed.code, closed.reason) == (1013, "consumer too slow")


async def test_reconnect_closes_and_resumes_at_once(relay: RunningRelay) -> None:
    """``subscription.reconnect()``: the client closes its connection (1000) and makes a new
    one, resuming after its position: a message published in between arrives, once."""
    recorder = Recorder()
    with trio.fail_after(GUARD_SECONDS):
        async with (
            subscribe(relay.ws_url, "again", on_event=recorder, backoff=FAST) as sub,
            reading(sub, recorder),
        ):
            await recorder.wait_for(Subscribed)
            await publish(relay.ws_url, "again", ["1"])
            await recorder.wait_for(ReceivedMessage, 1)
            sub.reconnect()
            await publish(relay.ws_url, "again", ["2"])
            await recorder.wait_for(Reconnecting)
            await recorder.wait_for(Subscribed, 2)
            await publish(relay.ws_url, "again", ["3"])
            await recorder.wait_for(ReceivedMessage, 3)
    messages = [item.payload for item in recorder.items if isinstance(item, ReceivedMessage)]
    reconnecting = next(item for item in recorder.items if isinstance(item, Reconnecting))
    assert messages == ["1", "2", "3"]
    assert reconnecting.code == CloseCode.NORMAL


async def test_reconnect_while_the_reader_lags_loses_nothing(relay: RunningRelay) -> None:
    """``reconnect()`` while a message waits for the reader (a full buffer): the hand-over
    finishes first, so the resumed connection starts after it, and nothing is lost."""
    from tests.helpers import wait_until

    recorder = Recorder()
    with trio.fail_after(GUARD_SECONDS):
        async with subscribe(
            relay.ws_url, "lag", backoff=FAST, buffer_messages=1, on_event=recorder
        ) as sub:
            got: list[ReceivedMessage] = []

            async def read_one() -> None:
                got.append(await sub.__anext__())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_one)
                await recorder.wait_for(Subscribed)
                await publish(relay.ws_url, "lag", ["1"])
            # Nobody reads now: "2" fills the buffer, "3" waits to be handed over.
            await publish(relay.ws_url, "lag", ["2", "3", "4"])
            connector = sub._connector
            assert connector is not None
            await wait_until(lambda: connector._delivering)
            sub.reconnect()
            await publish(relay.ws_url, "lag", ["5"])
            rest = [message.payload for message in await take(sub, 4)]
    assert [message.payload for message in got] == ["1"]
    assert rest == ["2", "3", "4", "5"]


async def test_moves_to_another_relay_after_a_reset(
    redis_server: RedisServer, start_relay: StartRelay, nursery: trio.Nursery
) -> None:
    """Two relays on one Redis behind a proxy: the connection is reset (no close frame) and
    the proxy sends the client to the other relay, where it resumes without loss."""
    first = await start_relay(broker=redis_server.url)
    second = await start_relay(broker=redis_server.url)
    proxy = ForwardingProxy(first.port)
    await nursery.start(proxy.run)
    recorder = Recorder()
    with trio.fail_after(GUARD_SECONDS):
        async with (
            subscribe(
                f"ws://127.0.0.1:{proxy.port}", "moving", on_event=recorder, backoff=FAST
            ) as subscription,
            reading(subscription, recorder),
        ):
            await recorder.wait_for(Subscribed)
            await publish(first.ws_url, "moving", ["1", "2"])
            await recorder.wait_for(ReceivedMessage, 2)
            proxy.target_port = second.port
            assert proxy.reset_all() == 1
            await publish(first.ws_url, "moving", ["3"])
            await recorder.wait_for(Reconnecting)
            await publish(second.ws_url, "moving", ["4"])
            await recorder.wait_for(ReceivedMessage, 4)
    assert [m.payload for m in recorder.messages] == ["1", "2", "3", "4"]
    assert recorder.of(Reconnecting)[0].code is None
    assert recorder.of(Subscribed)[-1].recovered


async def test_a_balancer_that_accepts_and_never_answers_is_timed_out_and_retried(
    relay: RunningRelay, nursery: trio.Nursery
) -> None:
    """Behind a proxy whose backend accepts TCP and never answers the handshake (a balancer
    in front of a dead relay), each attempt ends at connect_timeout_seconds and the client
    tries again; once the proxy sends it to a relay, it subscribes (trio-websocket alone
    waited for good: triorelay.compat.trio_websocket)."""
    async with trio.open_nursery() as silent:

        async def never_answer(stream: trio.SocketStream) -> None:
            await trio.sleep_forever()

        listeners = await silent.start(trio.serve_tcp, never_answer, 0)
        proxy = ForwardingProxy(listeners[0].socket.getsockname()[1])
        await nursery.start(proxy.run)
        recorder = Recorder()
        with trio.fail_after(GUARD_SECONDS):
            async with (
                subscribe(
                    f"ws://127.0.0.1:{proxy.port}",
                    "balanced",
                    on_event=recorder,
                    backoff=FAST,
                    connect_timeout_seconds=0.2,
                ) as subscription,
                reading(subscription, recorder),
            ):
                await recorder.wait_for(Reconnecting, 2)
                proxy.target_port = relay.port
                await recorder.wait_for(Subscribed)
                await publish(relay.ws_url, "balanced", ["1"])
                await recorder.wait_for(ReceivedMessage)
        silent.cancel_scope.cancel()
    assert all("ConnectionTimeout" in r.reason for r in recorder.of(Reconnecting))
    assert [m.payload for m in recorder.messages] == ["1"]


async def test_resumes_after_a_network_partition(
    relay: RunningRelay, nursery: trio.Nursery
) -> None:
    """A partition (nothing forwarded, nothing closed) is found by the keepalive ping; once
    the network is back the client resumes, losing and repeating nothing."""
    proxy = TcpProxy(relay.port)
    await nursery.start(proxy.run)
    recorder = Recorder()
    with trio.fail_after(GUARD_SECONDS):
        async with (
            subscribe(
                f"ws://127.0.0.1:{proxy.port}",
                "net",
                on_event=recorder,
                backoff=FAST,
                ping_interval_seconds=0.05,
                ping_timeout_seconds=0.2,
                connect_timeout_seconds=0.5,
                close_timeout_seconds=0.1,
            ) as subscription,
            reading(subscription, recorder),
        ):
            await recorder.wait_for(Subscribed)
            await publish(relay.ws_url, "net", ["1", "2"])
            await recorder.wait_for(ReceivedMessage, 2)
            proxy.cut()
            await publish(relay.ws_url, "net", ["3", "4"])
            await recorder.wait_for(Reconnecting)
            proxy.mend()
            await recorder.wait_for(ReceivedMessage, 4)
    assert [m.payload for m in recorder.messages] == ["1", "2", "3", "4"]
    assert "no pong" in recorder.of(Reconnecting)[0].reason


async def test_one_subscription_lives_through_relay_restarts_with_redis(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The relay shuts down (1001), is down for a while (connections refused), and a new one
    starts on the same port with the same Redis: the subscription resumes, and everything
    published meanwhile comes, once."""
    settings: dict[str, Any] = {"broker": redis_server.url, "upload_dir": tmp_path}
    recorder = Recorder()
    with trio.fail_after(GUARD_SECONDS):
        async with trio.open_nursery() as relays:
            first = await start_server(relays, **settings)
            url = first.ws_url
            async with (
                subscribe(url, "life", on_event=recorder, backoff=FAST) as subscription,
                reading(subscription, recorder),
            ):
                await recorder.wait_for(Subscribed)
                await publish(url, "life", ["1"])
                await recorder.wait_for(ReceivedMessage)
                first.stop.set()
                await recorder.wait_for(Reconnecting, 3)  # the 1001, then refusals
                second = await start_server(relays, port=first.port, **settings)
                await publish(url, "life", ["2", "3"])
                await recorder.wait_for(ReceivedMessage, 3)
            second.stop.set()
    assert [m.payload for m in recorder.messages] == ["1", "2", "3"]
    assert [m.position.offset for m in recorder.messages] == [1, 2, 3]
    assert recorder.of(Reconnecting)[0].code == 1001
    assert recorder.of(Subscribed)[-1].recovered


async def test_a_memory_relay_restart_is_reported_as_a_new_epoch(tmp_path: Path) -> None:
    """With the memory broker a restart loses the history: the resume is reported as not
    recovered (reason epoch), and the stream goes on in the new epoch."""
    recorder = Recorder()
    with trio.fail_after(GUARD_SECONDS):
        async with trio.open_nursery() as relays:
            first = await start_server(relays, upload_dir=tmp_path)
            url = first.ws_url
            async with (
                subscribe(url, "mem", on_event=recorder, backoff=FAST) as subscription,
                reading(subscription, recorder),
            ):
                await recorder.wait_for(Subscribed)
                await publish(url, "mem", ["old"])
                await recorder.wait_for(ReceivedMessage)
                first.stop.set()
                await recorder.wait_for(Reconnecting)
                second = await start_server(relays, port=first.port, upload_dir=tmp_path)
                await recorder.wait_for(Subscribed, 2)
                await publish(url, "mem", ["new"])
                await recorder.wait_for(ReceivedMessage, 2)
            second.stop.set()
    old, new = recorder.messages
    resumed = recorder.of(Subscribed)[-1]
    assert (resumed.recovering, resumed.recovered, resumed.reason) == (True, False, "epoch")
    assert new.payload == "new"
    assert new.position.epoch == resumed.position.epoch != old.position.epoch


async def test_recover_required_failing_ends_with_recovery_failed(relay: RunningRelay) -> None:
    """A position from another epoch with recover=required: RecoveryFailed, reason epoch."""
    await publish(relay.ws_url, "strict", ["1"])
    with trio.fail_after(GUARD_SECONDS), pytest.raises(RecoveryFailed) as raised:
        async with subscribe(
            relay.ws_url, "strict", since="another:1", recover="required"
        ) as subscription:
            await take(subscription, 1)
    assert (raised.value.code, raised.value.recovery_reason) == (4410, "epoch")


async def test_best_effort_reports_what_could_not_be_recovered(
    start_relay: StartRelay,
) -> None:
    """A position older than the history keeps: subscribed says trimmed, the stream goes on
    from the channel's position."""
    relay = await start_relay(history_messages=2)
    await publish(relay.ws_url, "short", ["1", "2", "3", "4", "5"])
    epoch = (await relay.relay.hub.recover("short", None)).position.epoch
    recorder = Recorder()
    with trio.fail_after(GUARD_SECONDS):
        async with (
            subscribe(relay.ws_url, "short", since=f"{epoch}:1", on_event=recorder) as sub,
            reading(sub, recorder),
        ):
            await recorder.wait_for(Subscribed)
            await publish(relay.ws_url, "short", ["6"])
            await recorder.wait_for(ReceivedMessage)
    (subscribed,) = recorder.of(Subscribed)
    assert (subscribed.recovered, subscribed.reason) == (False, "trimmed")
    assert subscribed.position == Position(epoch, 5)
    assert [m.position for m in recorder.messages] == [Position(epoch, 6)]
