"""compat/hypercorn/app_queue.py: each app's ASGI events in an AppQueue, as trio's channel did."""

from __future__ import annotations

import hashlib
import inspect
import math
import textwrap
import tracemalloc
from typing import Any

import pytest
import trio
import trio.testing
from hypercorn.trio import tcp_server as tcp_server_module
from hypercorn.trio.task_group import TaskGroup

from triorelay.compat import hypercorn as compat
from triorelay.compat.hypercorn.app_queue import AppQueue, AppTaskGroup

#: sha256 of Hypercorn 0.18.0's ``TaskGroup.spawn_app``, dedented: AppTaskGroup copies it.
SPAWN_APP_SHA256 = "487c35772c8bd89c440732d9b5a63403895fcbb7eb3c40b9d63815d4bb6d1187"


def test_hypercorn_spawns_apps_as_the_app_task_group_expects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """AppTaskGroup.spawn_app is Hypercorn's with the queue swapped in: pinned, so a change to
    Hypercorn's (another argument to the app's task, another channel use) fails here."""
    source = textwrap.dedent(inspect.getsource(TaskGroup.spawn_app))
    assert "trio.open_memory_channel[ASGIReceiveEvent](" in source
    assert "return app_send_channel.send" in source
    digest = hashlib.sha256(source.encode()).hexdigest()
    assert digest == SPAWN_APP_SHA256, "TaskGroup.spawn_app changed: review app_queue.py"
    assert "async with TaskGroup() as task_group:" in inspect.getsource(tcp_server_module)
    # Put back afterwards, so that the raw-Hypercorn tests elsewhere keep trio's channel.
    monkeypatch.setattr(tcp_server_module, "TaskGroup", TaskGroup)
    compat.use_app_queues()  # what create_app does
    assert tcp_server_module.TaskGroup is AppTaskGroup
    compat.use_app_queues()
    assert tcp_server_module.TaskGroup is AppTaskGroup


async def test_items_come_out_in_order_and_a_full_queue_makes_the_put_wait() -> None:
    queue = AppQueue(2)
    await queue.send("a")
    queue.send_nowait("b")
    with pytest.raises(trio.WouldBlock):
        queue.send_nowait("c")
    sent: list[str] = []

    async def put(item: str) -> None:
        await queue.send(item)
        sent.append(item)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(put, "c")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(put, "d")
        await trio.testing.wait_all_tasks_blocked()
        assert sent == []  # both wait: the queue is full
        assert await queue.receive() == "a"
        await trio.testing.wait_all_tasks_blocked()
        assert sent == ["c"]  # the oldest waiting put went in
        assert queue.receive_nowait() == "b"
        await trio.testing.wait_all_tasks_blocked()
        assert sent == ["c", "d"]
    assert [queue.receive_nowait(), queue.receive_nowait()] == ["c", "d"]
    with pytest.raises(trio.WouldBlock):
        queue.receive_nowait()


async def test_a_waiting_receive_gets_the_next_put_and_both_checkpoint() -> None:
    queue = AppQueue(10)
    got: dict[str, Any] = {}

    async def get(name: str) -> None:
        got[name] = await queue.receive()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(get, "first")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(get, "second")
        await trio.testing.wait_all_tasks_blocked()
        queue.send_nowait({"type": "websocket.connect"})
        await queue.send({"type": "websocket.disconnect", "code": 1000})
    # The longest waiting receive gets the first item.
    assert got == {
        "first": {"type": "websocket.connect"},
        "second": {"type": "websocket.disconnect", "code": 1000},
    }
    with pytest.raises(trio.WouldBlock):
        queue.receive_nowait()  # handed over, not queued as well
    with trio.CancelScope() as scope:  # a checkpoint even when it need not wait
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await queue.send(1)
    with pytest.raises(trio.WouldBlock):
        queue.receive_nowait()  # the cancelled send put nothing


async def test_a_cancelled_wait_takes_nothing(autojump_clock: trio.testing.MockClock) -> None:
    queue = AppQueue(1)
    with trio.move_on_after(1) as scope:  # nothing to receive: waits until cancelled
        await queue.receive()
    assert scope.cancelled_caught
    await queue.send("x")
    with trio.move_on_after(1) as scope:  # full: waits until cancelled, puts nothing
        await queue.send("y")
    assert scope.cancelled_caught
    assert queue.receive_nowait() == "x"
    with pytest.raises(trio.WouldBlock):
        queue.receive_nowait()


async def test_a_queue_of_no_room_hands_each_put_to_a_receive() -> None:
    queue = AppQueue(0)  # max_app_queue_size = 0: a rendezvous, as a channel of size 0
    with pytest.raises(trio.WouldBlock):
        queue.send_nowait("a")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.send, "a")
        await trio.testing.wait_all_tasks_blocked()
        assert queue.receive_nowait() == "a"
    with pytest.raises(trio.WouldBlock):
        queue.receive_nowait()


async def test_a_put_with_no_room_goes_to_a_waiting_receive() -> None:
    queue = AppQueue(0)
    got: list[str] = []

    async def get() -> None:
        got.append(await queue.receive())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(get)
        await trio.testing.wait_all_tasks_blocked()
        queue.send_nowait("a")  # no room, but a receive waits: handed over
    assert got == ["a"]


async def test_a_cancelled_receive_takes_nothing_even_with_an_item_there() -> None:
    queue = AppQueue(math.inf)  # unbounded, as a channel of size inf
    for i in range(100):
        queue.send_nowait(i)
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await queue.receive()
    assert queue.receive_nowait() == 0


def test_a_negative_or_fractional_size_is_refused_as_by_trio() -> None:
    with pytest.raises(ValueError, match="max_items"):
        AppQueue(-1)
    with pytest.raises(ValueError, match="max_buffer_size must be >= 0"):
        trio.open_memory_channel[Any](-1)
    with pytest.raises(TypeError, match="max_items must be an integer"):
        AppQueue(2.5)
    with pytest.raises(TypeError, match="max_buffer_size must be an integer"):
        trio.open_memory_channel[Any](2.5)


def test_a_queue_holds_far_less_than_a_channel_pair() -> None:
    """What the swap is for: one connection's share, measured as tools/idle_memory does."""

    def held_per(make: Any) -> float:
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            kept = [make() for _ in range(200)]
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        assert len(kept) == 200
        return sum(stat.size_diff for stat in after.compare_to(before, "filename")) / 200

    def channel_pair() -> Any:
        send, receive = trio.open_memory_channel[Any](10)
        return send.send, receive.receive

    def app_queue() -> Any:
        queue = AppQueue(10)
        return queue.send, queue.receive

    assert held_per(app_queue) < held_per(channel_pair) / 3
