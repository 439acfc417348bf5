"""subscribe() against a scripted stand-in relay: reconnection, resume, deduplication, close
codes, refusals, tokens, keepalive, and the bound between the connection and its reader.

The end-to-end behaviour against the real relay is in ``test_subscribe.py``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from tests.client.fake_relay import (
    FakeRelay,
    accept,
    send_messages,
    send_subscribed,
    start_fake_relay,
    start_mute_relay,
)
from tests.tcp_proxy import reset
from triorelay import framing
from triorelay.client import (
    Backoff,
    Closed,
    Dropped,
    Event,
    Gap,
    Position,
    ProtocolError,
    ReceivedMessage,
    Reconnecting,
    RecoveryFailed,
    Rejected,
    Subscribed,
    subscribe,
)
from triorelay.client import connector as connector_module
from triorelay.client.connector import Disconnect, retry_forever
from triorelay.client.subscribe import _Positions

#: A hang guard: these tests take milliseconds.
GUARD_SECONDS = 10
#: Reconnect at once (the delays themselves are tested with the autojump clock).
FAST = Backoff(initial_seconds=0.001, max_seconds=0.002)

StartFake = Callable[[Callable[[WebSocketRequest, int], Awaitable[None]]], Awaitable[FakeRelay]]


@pytest.fixture
def start_fake(nursery: trio.Nursery) -> StartFake:
    async def start(handler: Callable[[WebSocketRequest, int], Awaitable[None]]) -> FakeRelay:
        return await start_fake_relay(nursery, handler)

    return start


async def take(subscription: Any, count: int) -> list[ReceivedMessage]:
    return [await subscription.__anext__() for _ in range(count)]


# -- the reconnection loop, on a virtual clock --


async def test_retry_delays_grow_and_reset_after_a_subscribed_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Failed attempts wait 1x, 2x, 4x the initial ceiling (full draw); a connection that
    was subscribed starts the count again."""
    outcomes = iter([False, False, False, True, False])
    started: list[float] = []
    notices: list[Reconnecting] = []

    async def connect_once() -> Disconnect:
        started.append(trio.current_time())
        try:
            subscribed = next(outcomes)
        except StopIteration:
            raise Closed(4403, "done") from None
        return Disconnect(1006, "lost", subscribed)

    async def notify(event: Reconnecting) -> None:
        notices.append(event)

    backoff = Backoff(initial_seconds=1.0, max_seconds=100.0, random=lambda: 1.0)
    with trio.fail_after(GUARD_SECONDS * 100), pytest.raises(Closed):
        await retry_forever(connect_once, backoff, notify)
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(started)]
    assert gaps == [1.0, 2.0, 4.0, 1.0, 2.0]
    assert [n.attempt for n in notices] == [1, 2, 3, 1, 2]
    assert [n.delay_seconds for n in notices] == gaps


async def test_a_subscribed_connection_closed_with_1013_does_not_reset_the_delays(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A consumer evicted as too slow (1013, try again later) right after its subscribed
    frame keeps backing off, 1x, 2x, 4x: it does not come straight back to replay the
    history, again and again; any other subscribed end starts the count again."""
    outcomes = iter([(1013, True), (1013, True), (1013, True), (1001, True), (1013, True)])
    started: list[float] = []

    async def connect_once() -> Disconnect:
        started.append(trio.current_time())
        try:
            code, subscribed = next(outcomes)
        except StopIteration:
            raise Closed(4403, "done") from None
        return Disconnect(code, "consumer too slow", subscribed)

    async def notify(event: Reconnecting) -> None:
        pass

    backoff = Backoff(initial_seconds=1.0, max_seconds=100.0, random=lambda: 1.0)
    with trio.fail_after(GUARD_SECONDS * 100), pytest.raises(Closed):
        await retry_forever(connect_once, backoff, notify)
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(started)]
    assert gaps == [1.0, 2.0, 4.0, 1.0, 2.0]


async def test_a_long_outage_waits_at_most_the_cap(autojump_clock: trio.testing.MockClock) -> None:
    """Once the ceiling reaches max_seconds, every wait is at most max_seconds."""
    count = 0

    async def connect_once() -> Disconnect:
        nonlocal count
        count += 1
        if count > 12:
            raise Closed(4403, "stop")
        return Disconnect(None, "refused", False)

    async def notify(event: Reconnecting) -> None:
        assert event.delay_seconds <= 0.5

    backoff = Backoff(initial_seconds=0.05, max_seconds=0.5, random=lambda: 0.999999)
    start = trio.current_time()
    with pytest.raises(Closed):
        await retry_forever(connect_once, backoff, notify)
    # 0.05 + 0.1 + 0.2 + 0.4, then the cap 8 times
    assert trio.current_time() - start == pytest.approx((0.75 + 8 * 0.5) * 0.999999)


# -- against the stand-in relay --


async def test_messages_come_with_their_positions_and_the_subscribed_event(
    start_fake: StartFake,
) -> None:
    """Each message carries channel and position; subscribed is reported before them."""

    async def handler(request: WebSocketRequest, number: int) -> None:
        ws = await accept(request)
        await send_subscribed(ws, "chat", "E1", 10)
        await send_messages(ws, "chat", [11, 12])
        await send_messages(ws, "chat", [13], binary=True)
        await trio.sleep_forever()

    fake = await start_fake(handler)
    events: list[Event] = []
    with trio.fail_after(GUARD_SECONDS):
        async with subscribe(fake.url, "chat", on_event=events.append) as subscription:
            got = await take(subscription, 3)
            assert subscription.subscribed == Subscribed(
                "chat", Position("E1", 10), False, False, None, 0
            )
    assert [(m.channel, str(m.position), m.payload) for m in got] == [
        ("chat", "E1:11", "m11"),
        ("chat", "E1:12", "m12"),
        ("chat", "E1:13", b"m13"),
    ]
    assert events == [Subscribed("chat", Position("E1", 10), False, False, None, 0)]
    handshake = fake.handshakes[0]
    assert handshake.path == "/ws/consumer/chat"
    assert handshake.query == {}
    assert handshake.subprotocols == (framing.SUBPROTOCOL,)


async def test_reconnects_after_a_close_and_resumes_from_the_last_position(
    start_fake: StartFake,
) -> None:
    """After the relay closes, the next connection asks since=<last position>; replayed
    messages it already had are dropped, so each message comes once, in order."""

    async def handler(request: WebSocketRequest, number: int) -> None:
        ws = await accept(request)
        if number == 0:
            await send_subscribed(ws, "chat", "E1", 0)
            await send_messages(ws, "chat", range(1, 4))
            await ws.aclose(1001, "server shutting down")
        else:
            # A relay may replay more than asked (here from 2): the client drops 2 and 3.
            await send_subscribed(ws, "chat", "E1", 5, replayed=4, recovering=True, recovered=True)
            await send_messages(ws, "chat", range(2, 7))
            await trio.sleep_forever()

    fake = await start_fake(handler)
    events: list[Event] = []
    with trio.fail_after(GUARD_SECONDS):
        async with subscribe(
            fake.url, "chat", backoff=FAST, on_event=events.append
        ) as subscription:
            got = await take(subscription, 6)
            statistics = subscription.statistics()
            assert subscription.position == Position("E1", 6)
    assert [m.position.offset for m in got] == [1, 2, 3, 4, 5, 6]
    assert fake.handshakes[1].query == {"since": "E1:3", "recover": "best_effort"}
    assert (statistics.connections, statistics.duplicates) == (2, 2)
    reconnecting = [e for e in events if isinstance(e, Reconnecting)]
    assert [(e.code, e.reason, e.attempt) for e in reconnecting] == [
        (1001, "server shutting down", 1)
    ]


async def test_since_is_sent_on_the_first_connection(start_fake: StartFake) -> None:
    """since= and recover= go to the relay as query parameters from the start."""

    async def handler(request: WebSocketRequest, number: int) -> None:
        ws = await accept(request)
        await send_subscribed(ws, "chat", "E1", 8, replayed=1, recovering=True, recovered=True)
        await send_messages(ws, "chat", [8])
        await trio.sleep_forever()

    fake = await start_fake(handler)
    with trio.fail_after(GUARD_SECONDS):
        async with subscribe(fake.url, "chat", since="E1:7", recover="required") as subscription:
            assert [m.position.offset for m in await take(subscription, 1)] == [8]
    assert fake.handshakes[0].query == {"since": "E1:7", "recover": "required"}


async def test_a_dropped_connection_and_a_refused_one_are_retried(start_fake: StartFake) -> None:
    """A connection cut without a close frame, then a 503 refusal, then success: every
    message still comes once."""

    async def handler(request: WebSocketRequest, number: int) -> None:
        if number == 1:
            await request.reject(503, body=b"the relay is shutting down")
            return
        ws = await accept(request)
        if number == 0:
            await send_subscribed(ws, "chat", "E1", 0)
            await send_messages(ws, "chat", [1])
            await ws._stream.aclose()  # no close frame: TCP just ends
            return
        await send_subscribed(ws, "chat", "E1", 2, replayed=1, recovering=True, recovered=True)
        await send_messages(ws, "chat", [2, 3])
        await trio.sleep_forever()

    fake = await start_fake(handler)
    events: list[Event] = []
    with trio.fail_after(GUARD_SECONDS):
        async with subscribe(
            fake.url, "chat", backoff=FAST, on_event=events.append
        ) as subscription:
            assert [m.position.offset for m in await take(subscription, 3)] == [1, 2, 3]
    reconnecting = [e for e in events if isinstance(e, Reconnecting)]
    assert [e.code for e in reconnecting] == [None, None]
    assert "503" in reconnecting[1].reason
    assert [e.attempt for e in reconnecting] == [1, 2]


async def test_an_answer_that_is_not_a_handshake_is_retried(
    nursery: trio.Nursery, start_fake: StartFake
) -> None:
    """Something else on the port (or a broken proxy) answers the upgrade with bytes that
    are not HTTP: a failed attempt, retried like a refused one (trio-websocket's own error
    there is h11's LocalProtocolError, which ended the subscription for good); once a
    relay answers, the subscription goes on."""
    answers = 0
    fake = await start_fake(lambda request, number: _subscribed_then_one(request))
    fake_port = int(fake.url.rsplit(":", 1)[1])

    async def garbage_then_relay(stream: trio.SocketStream) -> None:
        nonlocal answers
        answers += 1
        if answers <= 2:
            await stream.receive_some(65536)
            await stream.send_all(b"garbage\r\n\r\n")
            return
        async with await trio.open_tcp_stream("127.0.0.1", fake_port) as upstream:
            async with trio.open_nursery() as pumps:
                pumps.start_soon(_pump, stream, upstream)
                pumps.start_soon(_pump, upstream, stream)

    listeners = await nursery.start(trio.serve_tcp, garbage_then_relay, 0)
    port = listeners[0].socket.getsockname()[1]
    events: list[Event] = []
    with trio.fail_after(GUARD_SECONDS):
        async with subscribe(
            f"ws://127.0.0.1:{port}", "chat", backoff=FAST, on_event=events.append
        ) as subscription:
            assert [m.position.offset for m in await take(subscription, 1)] == [1]
    reconnecting = [e for e in events if isinstance(e, Reconnecting)]
    assert len(reconnecting) == 2
    assert all("not a WebSocket handshake" in e.reason for e in reconnecting)


async def test_a_connection_cut_during_the_handshake_is_retried_at_once(
    nursery: trio.Nursery,
) -> None:
    """A relay going down with connections in its accept queue resets them before its 101:
    the attempt fails then (not at connect_timeout_seconds, here far beyond the guard) and the
    client tries again."""

    async def read_then_reset(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        reset(stream)

    listeners = await nursery.start(trio.serve_tcp, read_then_reset, 0)
    port = listeners[0].socket.getsockname()[1]
    events: list[Event] = []
    reconnected = trio.Event()

    def on_event(event: Event) -> None:
        events.append(event)
        if sum(isinstance(e, Reconnecting) for e in events) == 2:
            reconnected.set()

    with trio.fail_after(GUARD_SECONDS):
        async with subscribe(
            f"ws://127.0.0.1:{port}",
            "chat",
            backoff=FAST,
            on_event=on_event,
            connect_timeout_seconds=GUARD_SECONDS * 10,
        ) as subscription:
            async with trio.open_nursery() as reading:
                reading.start_soon(subscription.__anext__)
                await reconnected.wait()
                reading.cancel_scope.cancel()
    reasons = [e.reason for e in events if isinstance(e, Reconnecting)]
    assert all("ended during the WebSocket handshake" in reason for reason in reasons)


async def _subscribed_then_one(request: WebSocketRequest) -> None:
    ws = await accept(request)
    await send_subscribed(ws, "chat", "E1", 0)
    await send_messages(ws, "chat", [1])
    await trio.sleep_forever()


async def _pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        while data := await source.receive_some(65536):
            await sink.send_all(data)


async def test_a_relay_that_is_down_is_retried_until_it_is_back(nursery: trio.Nursery) -> None:
    """Connection refused (nothing listening) is retried with backoff until a relay listens
    on the port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    refused = trio.Event()
    events: list[Event] = []

    def on_event(event: Event) -> None:
        events.append(event)
        if isinstance(event, Reconnecting) and event.attempt == 3:
            refused.set()

    async def handler(request: WebSocketRequest) -> None:
        ws = await accept(request)
        await send_subscribed(ws, "chat", "E1", 0)
        await send_messages(ws, "chat", [1])
        await trio.sleep_forever()

    got: list[ReceivedMessage] = []
    with trio.fail_after(GUARD_SECONDS):
        async with subscribe(
            f"http://127.0.0.1:{port}", "chat", backoff=FAST, on_event=on_event
        ) as subscription:
            async with trio.open_nursery() as reader:

                async def read() -> None:
                    got.extend(await take(subscription, 1))

                reader.start_soon(read)
                await refused.wait()
                await nursery.start(partial(serve_websocket, handler, "127.0.0.1", port, None))
    assert [m.position.offset for m in got] == [1]
    assert all(e.code is None for e in events if isinstance(e, Reconnecting))


@pytest.mark.parametrize(
    ("code", "reason"),
    [(4403, "forbidden"), (1008, "policy"), (4401, "token expired"), (1009, "too big")],
)
async def test_closes_that_would_repeat_end_the_subscription(
    start_fake: StartFake, code: int, reason: str
) -> None:
    """4403, 1008, 1009 and 4401 (with a fixed token) end it with Closed, without a retry."""

    async def handler(request: WebSocketRequest, number: int) -> None:
        ws = await accept(request)
        await send_subscribed(ws, "chat", "E1", 0)
        await ws.aclose(code, reason)

    fake = await start_fake(handler)
    with trio.fail_after(GUARD_SECONDS), pytest.raises(Closed) as raised:
        async with subscribe(fake.url, "chat", backoff=FAST, token="fixed") as subscription:
            await take(subscription, 1)
    assert (raised.value.code, raised.value.reason) == (code, reason)
    assert len(fake.handshakes) == 1
    assert fake.handshakes[0].authorization == "Bearer fixed"


async def test_the_error_is_raised_again_on_each_later_read(start_fake: StartFake) -> None:
    """Once ended, every further read raises the same error (never a silent stop)."""

    async def handler(request: WebSocketRequest, number: int) -> None:
        ws = await accept(request)
        await ws.aclose(4403, "forbidden")

    fake = await start_fake(handler)
    with trio.fail_after(GUARD_SECONDS):
        async with subscribe(fake.url, "chat") as subscription:
            for _ in range(2):
                with pytest.raises(Closed, match="4403"):
                    await subscription.__anext__()


async def test_token_expiry_with_a_provider_reconnects_with_a_fresh_token(
    start_fake: StartFake,
) -> None:
    """4401 with a token provider: a new connection with the provider's next token."""
    tokens = iter(["first", "second"])

    async def provider() -> str:
        return next(tokens)

    async def handler(request: WebSocketRequest, number: int) -> None:
        ws = await accept(request)
        if number == 0:
            await send_subscribed(ws, "chat", "E1", 0)
            await send_messages(ws, "chat", [1])
            await ws.aclose(4401, "token expired")
            return
        await send_subscribed(ws, "chat", "E1", 1, recovering=True, recovered=True)
        await send_messages(ws, "chat", [2])
        await trio.sleep_forever()

    fake = await start_fake(handler)
    with trio.fail_after(GUARD_SECONDS):
        async with subscribe(fake.url, "chat", backoff=FAST, token=provider) as subscription:
            assert [m.position.offset for m in await take(subscription, 2)] == [1, 2]
    assert [h.authorization for h in fake.handshakes] == ["Bearer first", "Bearer second"]


async def test_tokens_are_refreshed_in_band(start_fake: StartFake) -> None:
    """With token_refresh_seconds, the provider's fresh token is sent as a refresh frame."""
    count = 0
    refreshed = trio.Event()
    seen: list[dict[str, str]] = []

    def provider() -> str:
        nonlocal count
        count += 1
        return f"token-{count}"

    async def handler(request: WebSocketRequest, number: int) -> None:
        ws = await accept(request)
        await send_subscribed(ws, "chat", "E1", 0)
        seen.append(json.loads(await ws.get_message()))
        refreshed.set()
        await trio.sleep_forever()

    fake = await start_fake(handler)
    with trio.fail_after(GUARD_SECONDS):
        async with subscribe(fake.url, "chat", token=provider, token_refresh_seconds=0.01):
            await refreshed.wait()
    assert fake.handshakes[0].authorization == "Bearer token-1"
    assert seen == [{"triorelay": "refresh", "token": "token-2"}]


async def test_recovery_failed_close_raises_recovery_failed(start_fake: StartFake) -> None:
    """4410 (recover=required, resume impossible) ends it with RecoveryFailed and the reason."""

    async def handler(request: WebSocketRequest, number: int) -> None:
        ws = await accept(request)
        await ws.aclose(4410, "recovery failed: trimmed")

    fake = await start_fake(handler)
    with trio.fail_after(GUARD_SECONDS), pytest.raises(RecoveryFailed) as raised:
        async with subscribe(fake.url, "chat", since="E1:5", recover="required") as subscription:
            await take(subscription, 1)
    assert (raised.value.code, raised.value.recovery_reason) == (4410, "trimmed")


async def test_required_recovery_refuses_a_subscribed_that_did_not_recover(
    start_fake: StartFake,
) -> None:
    """Defensively: recover=required and a subscribed frame saying recovered=false raises."""

    async def handler(request: WebSocketRequest, number: int) -> None:
        ws = await accept(request)
        await send_subscribed(ws, "chat", "E2", 0, recovering=True, reason="epoch")
        await trio.sleep_forever()

    fake = await start_fake(handler)
    with trio.fail_after(GUARD_SECONDS), pytest.raises(RecoveryFailed) as raised:
        async with subscribe(fake.url, "chat", since="E1:5", recover="required") as subscription:
            await take(subscription, 1)
    assert raised.value.recovery_reason == "epoch"


@pytest.mark.parametrize("status", [400, 401, 403, 404])
async def test_final_refusals_end_the_subscription(start_fake: StartFake, status: int) -> None:
    """A 4xx refusal of the handshake raises Rejected with the status and body, no retry."""

    async def handler(request: WebSocketRequest, number: int) -> None:
        await request.reject(status, body=b"invalid token: expired")

    fake = await start_fake(handler)
    with trio.fail_after(GUARD_SECONDS), pytest.raises(Rejected) as raised:
        async with subscribe(fake.url, "chat", backoff=FAST, token=lambda: "t") as subscription:
            await take(subscription, 1)
    assert (raised.value.status, raised.value.body) == (status, "invalid token: expired")
    assert len(fake.handshakes) == 1


async def test_a_relay_without_the_framing_is_a_protocol_error(start_fake: StartFake) -> None:
    """A relay that accepts without triorelay.v1 (an older one) ends it with ProtocolError."""

    async def handler(request: WebSocketRequest, number: int) -> None:
        ws = await request.accept()
        await ws.send_message("raw payload")
        await trio.sleep_forever()

    fake = await start_fake(handler)
    with trio.fail_after(GUARD_SECONDS), pytest.raises(ProtocolError, match=r"triorelay\.v1"):
        async with subscribe(fake.url, "chat") as subscription:
            await take(subscription, 1)


async def test_notices_reach_on_event_in_stream_order(start_fake: StartFake) -> None:
    """dropped and gap notices come to on_event between the messages they came between; a
    gap with a new epoch makes the next connection resume from that epoch."""

    async def handler(request: WebSocketRequest, number: int) -> None:
        ws = await accept(request)
        if number == 0:
            await send_subscribed(ws, "chat", "E1", 0)
            await send_messages(ws, "chat", [1])
            await ws.send_message(framing.dropped("chat", 2, 2))
            await send_messages(ws, "chat", [4])
            await ws.send_message(framing.gap("chat", None, "history lost", "E2"))
            await send_messages(ws, "chat", [1])
            await ws.aclose(1011, "oops")
            return
        await send_subscribed(ws, "chat", "E2", 1, recovering=True, recovered=True)
        await send_messages(ws, "chat", [2])
        await trio.sleep_forever()

    fake = await start_fake(handler)
    seen: list[object] = []
    with trio.fail_after(GUARD_SECONDS):
        async with subscribe(fake.url, "chat", backoff=FAST, on_event=seen.append) as sub:
            for _ in range(4):
                seen.append(str((await sub.__anext__()).position))
    kinds = [type(item).__name__ if not isinstance(item, str) else item for item in seen]
    assert kinds == [
        "Subscribed",
        "E1:1",
        "Dropped",
        "E1:4",
        "Gap",
        "E2:1",
        "Reconnecting",
        "Subscribed",
        "E2:2",
    ]
    assert isinstance(seen[2], Dropped)
    assert seen[2].count == 2
    assert isinstance(seen[4], Gap)
    assert seen[4].epoch == "E2"
    assert fake.handshakes[1].query["since"] == "E2:1"


async def test_the_buffer_holds_at_most_buffer_messages(start_fake: StartFake) -> None:
    """A reader that does not read leaves at most buffer_messages waiting; the rest stays
    with the relay (the connection stops reading), and nothing is lost once it reads."""
    sent = trio.Event()

    async def handler(request: WebSocketRequest, number: int) -> None:
        ws = await accept(request)
        await send_subscribed(ws, "chat", "E1", 0)
        await send_messages(ws, "chat", range(1, 21))
        sent.set()
        await trio.sleep_forever()

    fake = await start_fake(handler)
    with trio.fail_after(GUARD_SECONDS):
        async with subscribe(fake.url, "chat", buffer_messages=3) as subscription:
            await trio.testing.wait_all_tasks_blocked()
            while not sent.is_set() and subscription.statistics().buffered < 3:
                await trio.testing.wait_all_tasks_blocked()
            statistics = subscription.statistics()
            assert statistics.buffered == statistics.buffer_messages == 3
            got = await take(subscription, 20)
    assert [m.position.offset for m in got] == list(range(1, 21))


async def test_a_reconnect_right_after_a_message_is_read_loses_nothing(
    start_fake: StartFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """reconnect() between the moment a message is read (and counted in the position) and
    its hand-over to a full buffer: the hand-over still happens, then the reconnection, so
    the next connection's since does not skip it. (The hand-over was cancelled with the
    connection: message 2 was lost, and the resume after it went on from 3.)"""

    async def handler(request: WebSocketRequest, number: int) -> None:
        ws = await accept(request)
        if number == 0:
            await send_subscribed(ws, "chat", "E1", 0)
        else:  # a resume: everything again (the client drops what it had)
            await send_subscribed(ws, "chat", "E1", 5, replayed=5, recovering=True, recovered=True)
        await send_messages(ws, "chat", range(1, 6))
        await trio.sleep_forever()

    fake = await start_fake(handler)
    cut = trio.Event()
    original = _Positions.receive

    def receive_then_reconnect(self: _Positions, frame: Any) -> ReceivedMessage | Event | None:
        item = original(self, frame)
        if isinstance(item, ReceivedMessage) and item.position.offset == 2 and not cut.is_set():
            subscription.reconnect()  # message 2 is counted, not handed over yet
            cut.set()
        return item

    monkeypatch.setattr(_Positions, "receive", receive_then_reconnect)
    with trio.fail_after(GUARD_SECONDS):
        async with subscribe(fake.url, "chat", buffer_messages=2, backoff=FAST) as subscription:
            # subscribed and message 1 fill the buffer: message 2's hand-over must wait.
            await cut.wait()
            got = await take(subscription, 4)
            await trio.testing.wait_all_tasks_blocked()
    assert [m.position.offset for m in got] == [1, 2, 3, 4]
    assert len(fake.handshakes) == 2  # the reconnection did happen, after the hand-over
    assert fake.handshakes[1].query["since"] == "E1:2"


async def test_a_reconnect_asked_as_a_connection_ends_does_not_cut_the_next(
    start_fake: StartFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """reconnect() while a connection is ending on its own (its close read, its session not
    yet over): the next connection is not cut for it at its first full buffer (the request
    stayed pending, and the next blocking hand-over cancelled a healthy connection)."""

    async def handler(request: WebSocketRequest, number: int) -> None:
        ws = await accept(request)
        if number == 0:
            await send_subscribed(ws, "chat", "E1", 0)
            await send_messages(ws, "chat", [1])
            await ws.aclose(1001, "server shutting down")
            return
        await send_subscribed(ws, "chat", "E1", 1, replayed=0, recovering=True, recovered=True)
        await send_messages(ws, "chat", range(2, 6))
        await trio.sleep_forever()

    fake = await start_fake(handler)
    original = connector_module.closed_error

    def closed_then_reconnect(closed: Any) -> Any:
        subscription.reconnect()  # as the close is being read: the session is still on
        return original(closed)

    monkeypatch.setattr(connector_module, "closed_error", closed_then_reconnect)
    with trio.fail_after(GUARD_SECONDS):
        # subscribed, message 1 and the reconnecting event fill the buffer: the second
        # connection's first frame waits for the reader.
        async with subscribe(fake.url, "chat", buffer_messages=3, backoff=FAST) as subscription:
            while len(fake.handshakes) < 2:
                await trio.testing.wait_all_tasks_blocked()
            await trio.testing.wait_all_tasks_blocked()
            got = await take(subscription, 5)
            await trio.testing.wait_all_tasks_blocked()
    assert [m.position.offset for m in got] == [1, 2, 3, 4, 5]
    assert len(fake.handshakes) == 2


async def test_leaving_the_block_closes_with_1000(start_fake: StartFake) -> None:
    """The relay sees a clean close (1000), not a dropped connection."""
    codes: list[int | None] = []

    async def handler(request: WebSocketRequest, number: int) -> None:
        ws = await accept(request)
        await send_subscribed(ws, "chat", "E1", 0)
        await send_messages(ws, "chat", [1])
        try:
            await ws.get_message()
        except ConnectionClosed:
            codes.append(ws.closed.code if ws.closed else None)

    fake = await start_fake(handler)
    with trio.fail_after(GUARD_SECONDS):
        async with subscribe(fake.url, "chat") as subscription:
            await take(subscription, 1)
        await fake.ended[0].wait()
    assert codes == [1000]


async def test_a_silent_relay_is_detected_by_ping(nursery: trio.Nursery) -> None:
    """A relay that stops answering (no pong) is given up after ping_timeout_seconds and
    the subscription reconnects."""
    subscribed = framing.subscribed(
        "chat", Position("E1", 0), recovering=False, recovered=False, reason=None, replayed=0
    )
    url = await start_mute_relay(nursery, first_frames=[subscribed])
    events: list[Event] = []
    gone = trio.Event()

    def on_event(event: Event) -> None:
        events.append(event)
        if isinstance(event, Reconnecting):
            gone.set()

    with trio.fail_after(GUARD_SECONDS):
        async with subscribe(
            url,
            "chat",
            on_event=on_event,
            backoff=FAST,
            ping_interval_seconds=0.02,
            ping_timeout_seconds=0.05,
            close_timeout_seconds=0.05,
        ) as subscription:
            async with trio.open_nursery() as reader:
                reader.start_soon(take, subscription, 1)
                await gone.wait()
                reader.cancel_scope.cancel()
    reconnecting = next(e for e in events if isinstance(e, Reconnecting))
    assert "no pong" in reconnecting.reason


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"since": "nope"}, "position"),
        ({"url": "ftp://h"}, "URL"),
        ({"buffer_messages": 0}, "buffer_messages"),
    ],
)
async def test_bad_arguments_fail_at_once(kwargs: dict[str, Any], match: str) -> None:
    """A malformed since, URL or bound raises ValueError when subscribing, not later."""
    arguments: dict[str, Any] = {"url": "ws://127.0.0.1:1", "channel": "chat"} | kwargs
    with pytest.raises(ValueError, match=match):
        async with subscribe(**arguments):
            raise AssertionError("not reached")
