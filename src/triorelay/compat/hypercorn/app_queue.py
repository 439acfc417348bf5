"""A small queue for each app's ASGI events (Hypercorn 0.18.0's trio worker).

``hypercorn/trio/task_group.py: TaskGroup.spawn_app`` gives every request and every WebSocket a
``trio.open_memory_channel(config.max_app_queue_size)`` pair for the events it hands the app
(``http.request``, ``websocket.connect``, ``websocket.disconnect``, ...), and keeps it for the
connection's life: two channel objects with a set each, their state with a ``deque`` and two
``OrderedDict`` of waiting tasks, about 1.9 KB of Python objects per connection (tracemalloc)
for what is, on an idle relay connection, a queue that is empty for hours (the inbound tap,
:mod:`.tap`, delivers messages without it). :class:`AppQueue` does the same job in one
``__slots__`` object: the same bound (``max_app_queue_size``, a put waits while it is full),
the same order, a checkpoint on every ``send`` and ``receive`` as trio's channels have, a
cancelled wait taking nothing. It is never closed, as Hypercorn never closes its channel.

:func:`use_app_queues` makes Hypercorn's ``TCPServer`` (looked up in
``hypercorn.trio.tcp_server`` when a connection starts) build a :class:`AppTaskGroup`, whose
``spawn_app`` is Hypercorn's with the queue in place of the channel pair.
``tests/compat/hypercorn/test_app_queue.py`` pins the code it replaces. The relay's worker
gets it through :mod:`.isolation`, whose ``IsolatedTaskGroup`` (installed there by
``isolate_connection_errors``) is an AppTaskGroup too; ``use_app_queues`` then finds no
Hypercorn ``TaskGroup`` to replace and does nothing.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import outcome
import trio
from hypercorn.trio import tcp_server as tcp_server_module
from hypercorn.trio.task_group import TaskGroup, _handle


class AppQueue:
    """A bounded FIFO of ASGI events between Hypercorn and one app, with trio's memory channel
    methods Hypercorn and the relay use (``send``, ``send_nowait``, ``receive``,
    ``receive_nowait``)."""

    __slots__ = ("_items", "_max", "_receivers", "_senders")

    def __init__(self, max_items: int | float) -> None:
        # What trio.open_memory_channel refuses, refused alike.
        if max_items != math.inf and not isinstance(max_items, int):
            raise TypeError("max_items must be an integer or math.inf")
        if max_items < 0:
            raise ValueError("max_items must be >= 0")
        self._max = max_items
        self._items: list[Any] = []
        #: Tasks waiting in :meth:`receive` (only while ``_items`` is empty), oldest first.
        self._receivers: list[trio.lowlevel.Task] = []
        #: Tasks waiting in :meth:`send` with what they put (only while it is full), oldest first.
        self._senders: list[tuple[trio.lowlevel.Task, Any]] = []

    def send_nowait(self, item: Any) -> None:
        """Queue ``item`` (or hand it to a waiting receiver); raise trio.WouldBlock if full."""
        if self._receivers:
            trio.lowlevel.reschedule(self._receivers.pop(0), outcome.Value(item))
        elif len(self._items) < self._max:
            self._items.append(item)
        else:
            raise trio.WouldBlock

    async def send(self, item: Any) -> None:
        """Queue ``item``, waiting while the queue is full."""
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self.send_nowait(item)
        except trio.WouldBlock:
            pass
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        task = trio.lowlevel.current_task()
        entry = (task, item)
        self._senders.append(entry)

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._senders.remove(entry)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def receive_nowait(self) -> Any:
        """The oldest queued item; raise trio.WouldBlock if there is none."""
        if self._items:
            item = self._items.pop(0)
            if self._senders:  # room now: the oldest waiting put goes in, behind the others
                task, waiting = self._senders.pop(0)
                self._items.append(waiting)
                trio.lowlevel.reschedule(task)
            return item
        if self._senders:  # a queue of no room (max_app_queue_size 0): straight from a put
            task, item = self._senders.pop(0)
            trio.lowlevel.reschedule(task)
            return item
        raise trio.WouldBlock

    async def receive(self) -> Any:
        """The oldest queued item, waiting for one."""
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            item = self.receive_nowait()
        except trio.WouldBlock:
            pass
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return item
        task = trio.lowlevel.current_task()
        self._receivers.append(task)

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._receivers.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)


class AppTaskGroup(TaskGroup):
    """Hypercorn's ``TaskGroup``, each app's events in an :class:`AppQueue`."""

    async def spawn_app(
        self, app: Any, config: Any, scope: Any, send: Callable[[Any], Awaitable[None]]
    ) -> Callable[[Any], Awaitable[None]]:
        queue = AppQueue(config.max_app_queue_size)
        nursery = self._nursery
        assert nursery is not None
        nursery.start_soon(
            _handle,
            app,
            config,
            scope,
            queue.receive,
            send,
            trio.to_thread.run_sync,
            trio.from_thread.run,
        )
        return queue.send


def use_app_queues() -> None:
    """Give each connection Hypercorn serves from now on an :class:`AppTaskGroup`. Idempotent;
    does nothing if ``hypercorn.trio.tcp_server`` has no ``TaskGroup`` of Hypercorn's."""
    if getattr(tcp_server_module, "TaskGroup", None) is TaskGroup:
        setattr(tcp_server_module, "TaskGroup", AppTaskGroup)  # noqa: B010 - not re-exported
