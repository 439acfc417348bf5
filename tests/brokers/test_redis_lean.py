"""The lean Redis path's pure parts (command encoding, the notifications' format), a closed
connection's errors, and the subscriber's wake-ups."""

from __future__ import annotations

import socket

import hiredis
import pytest
import trio
import trio.testing

from triorelay.brokers.redis.lean import (
    RedisConnectionError,
    RespStream,
    Subscriber,
    encode_arguments,
    encode_command,
)
from triorelay.brokers.redis.streams import _notified_entries


def parsed(data: bytes) -> object:
    reader = hiredis.Reader()
    reader.feed(data)
    return reader.gets()


def test_a_command_is_an_array_of_bulk_strings() -> None:
    """Bytes, text and numbers become bulk strings, as Redis reads them."""
    data = encode_command([b"SET", "k\u00e9y", 42, b""])
    assert data == b"*4\r\n$3\r\nSET\r\n$4\r\nk\xc3\xa9y\r\n$2\r\n42\r\n$0\r\n\r\n"


def test_arguments_encoded_once_are_spliced_in_and_counted() -> None:
    """Arguments encoded beforehand make the same command as the arguments themselves."""
    head = encode_arguments([2, "ch:a", b"meta:a"])
    assert encode_command([b"EVALSHA", b"abc", head, b"x"]) == encode_command(
        [b"EVALSHA", b"abc", 2, "ch:a", b"meta:a", b"x"]
    )
    assert parsed(encode_command([head])) == [b"2", b"ch:a", b"meta:a"]


def notification(
    epoch: bytes, first: int, accepted: bytes, messages: list[tuple[bytes, bytes, bytes]]
) -> bytes:
    """What the publish script PUBLISHes, built as its Lua code builds it."""
    parts = [b"%s %d %s %d\n" % (epoch, first, accepted, len(messages))]
    for payload, kind, trace in messages:
        parts += [b"%d %d %s\n" % (len(payload), len(trace), kind), payload, trace]
    return b"".join(parts)


def test_a_notification_gives_its_entries_as_the_stream_holds_them() -> None:
    """Ids from the epoch and first offset; payload and type; a trace with its accepted time."""
    data = notification(b"1700", 7, b"123", [(b"a\nb c", b"1", b""), (b"\x00\xff", b"0", b"TR")])
    first, second = _notified_entries(data)
    assert first == (b"1700-7", {b"p": b"a\nb c", b"t": b"1"})
    assert second == (b"1700-8", {b"p": b"\x00\xff", b"t": b"0", b"r": b"TR", b"a": b"123"})


@pytest.mark.parametrize(
    "data",
    [
        b"",  # an empty notification (another writer's: read the stream)
        b"1700 7  1\n",  # fewer bytes than it says
        b"1700 7  1\n3 0 1\nab",
        b"1700 7  1\n2 0 1\nabc",  # more than it says
        b"e 7  1\n1 0 1\na",  # not an epoch
        b"1700 7\n",
    ],
)
def test_anything_else_is_not_a_notification(data: bytes) -> None:
    """A notification the reader cannot read whole is refused (it reads the stream instead)."""
    with pytest.raises(ValueError):  # noqa: PT011 - the one error it raises
        _notified_entries(data)


async def test_a_closed_connection_fails_every_read_and_write_alike() -> None:
    """Once closed, each read and each write raises RedisConnectionError: never a wait on the
    closed socket's descriptor -1, which trio would keep registered (the second would then
    be a BusyResourceError, and so would any other wait on a closed socket in the process).
    The reads are what the check changed; a write to a closed socket failed before it too."""
    ours, theirs = socket.socketpair()
    with theirs:
        ours.setblocking(False)
        resp = RespStream(trio.SocketStream(trio.socket.from_stdlib_socket(ours.dup())), ours)
        await resp.aclose()
        for _ in range(2):
            with pytest.raises(RedisConnectionError, match="lost the connection"):
                await resp.receive()
            with pytest.raises(RedisConnectionError, match="lost the connection"):
                await resp.send(b"*1\r\n$4\r\nPING\r\n")


@pytest.mark.timeout(10)
async def test_a_wake_while_the_reader_sends_an_unsubscription_is_not_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The reader's wait sends pending unsubscriptions before it waits; a wake in that moment
    (another channel's first consumer positioned, a drain with room again) must still end the
    wait at once, not after ``idle_seconds`` (10 s, when the reader would PING). Redis is the
    other end of a lockstep stream, so the UNSUBSCRIBE blocks until the test reads it."""
    client, redis = trio.testing.lockstep_stream_pair()
    subscriber = Subscriber(RespStream(client), timeout_seconds=5)
    subscriber.unsubscribe_nowait(b"n:gone")
    returned: list[float] = []
    start = trio.current_time()

    async def reader() -> None:
        assert await subscriber.wait_messages(idle_seconds=10) == []
        returned.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()  # the reader is sending the UNSUBSCRIBE
        subscriber.wake()
        assert parsed(await redis.receive_some()) == [b"UNSUBSCRIBE", b"n:gone"]
    assert returned == [start]  # no time passed: it did not wait


@pytest.mark.timeout(10)
async def test_a_wake_before_the_wait_ends_the_next_wait_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A wake while nobody waits (the reader is busy delivering) is kept for the next wait."""
    client, _redis = trio.testing.lockstep_stream_pair()
    subscriber = Subscriber(RespStream(client), timeout_seconds=5)
    start = trio.current_time()
    subscriber.wake()
    assert await subscriber.wait_messages(idle_seconds=10) == []
    assert trio.current_time() == start
    # Used once: the next wait waits (and, after idle_seconds, sends a PING).
    with trio.move_on_after(1) as waited:
        await subscriber.wait_messages(idle_seconds=10)
    assert waited.cancelled_caught


@pytest.mark.timeout(10)
async def test_wakes_do_not_put_off_noticing_a_silent_redis(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After ``idle_seconds`` of silence the subscriber sends a PING, which must be answered
    within ``timeout_seconds``; the reader being woken every second meanwhile (joins, drains)
    must not start that wait again each time, or a silent connection is never noticed."""
    client, redis = trio.testing.lockstep_stream_pair()
    subscriber = Subscriber(RespStream(client), timeout_seconds=5)
    sent: list[object] = []

    async def silent_redis() -> None:  # reads every command, never answers
        while True:
            sent.append(parsed(await redis.receive_some()))

    async def waking() -> None:
        while True:
            await trio.sleep(1)
            subscriber.wake()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(silent_redis)
        start = trio.current_time()
        assert await subscriber.wait_messages(idle_seconds=10) == []  # silent: the PING
        assert sent == [[b"PING"]]
        nursery.start_soon(waking)

        async def wait_until_it_fails() -> None:
            with trio.fail_after(60):  # woken each second: it would wait for ever
                while True:
                    await subscriber.wait_messages(idle_seconds=10)

        with pytest.raises(RedisConnectionError, match="did not answer a PING"):
            await wait_until_it_fails()
        assert trio.current_time() - start <= 10 + 5 + 1
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(10)
async def test_an_answer_no_wait_listened_for_is_still_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Redis answers the PING at once, but the reader is busy, and every wait it starts is
    ended by a wake already there, until past ``timeout_seconds`` (a reconnect storm: each
    join wakes it): the answer is in the socket, unread. The next wait must read it, not
    take the connection for a silent one."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        stream = RespStream(trio.SocketStream(trio.socket.from_stdlib_socket(ours.dup())), ours)
        subscriber = Subscriber(stream, timeout_seconds=5)
        assert await subscriber.wait_messages(idle_seconds=10) == []  # silent: the PING
        assert parsed(theirs.recv(1024)) == [b"PING"]
        theirs.sendall(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n")
        for _ in range(7):
            await trio.sleep(1)
            subscriber.wake()
            assert await subscriber.wait_messages(idle_seconds=10) == []
        # Past the deadline, unwoken: it reads the answer (no error), and pings again.
        assert await subscriber.wait_messages(idle_seconds=10) == []
        assert parsed(theirs.recv(1024)) == [b"PING"]
        await stream.aclose()
