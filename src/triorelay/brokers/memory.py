"""The in-process broker: publishing is delivering to this relay's own channel."""

from __future__ import annotations

import uuid
from typing import Any

import trio

from triorelay.brokers.base import Deliver, Recovery
from triorelay.brokers.history import MemoryHistories, reason_after_reading, recovery_reason
from triorelay.envelopes import Payload
from triorelay.framing import Position
from triorelay.settings import Mode, Settings
from triorelay.tracing import Trace, now_ns


class MemoryBroker:
    """One process, no network: :meth:`publish` numbers each message and delivers it at once.

    Broadcast channels keep their position and history in :class:`MemoryHistories` (every
    channel within ``history_max_bytes``); a relay that restarts starts every channel in a new
    epoch. Queue channels keep one number per live channel, the last sequence number given
    out; the hub tells the broker when a channel goes (:meth:`forget`).
    """

    delivers_locally = True

    def __init__(self, deliver: Deliver, settings: Settings | None = None) -> None:
        self._deliver = deliver
        self._settings = settings if settings is not None else Settings()
        self.node = uuid.uuid4().hex[:12]
        self._last_seq: dict[str, int] = {}
        #: Live queue channels' publish locks (forgotten with the channel).
        self._queue_locks: dict[str, trio.Lock] = {}
        self.histories = MemoryHistories(
            self._settings.history_max_bytes,
            self._settings.history_meta_ttl_seconds,
            trio.current_time,
        )

    async def publish(
        self,
        name: str,
        mode: Mode,
        payloads: list[Payload],
        published: list[int],
        traces: dict[int, Trace] | None = None,
    ) -> None:
        deliver = self._deliver
        if mode == "broadcast":
            histories = self.histories
            history = histories.held(name)
            if history is None:
                history = histories.state(name, self._settings.channel_config(name))
            histories.touch(history)
            epoch = history.epoch
            try:
                for index, payload in enumerate(payloads):
                    # Numbered and kept before it is delivered: an offset is never given
                    # twice, even when a delivery that waits (``block``) is cut; the message
                    # is then published (in the history, and with the consumers that took it).
                    offset = histories.keep(history, payload)
                    published.append(offset)
                    trace = traces.get(index) if traces else None
                    if trace is not None:
                        trace.accepted_ns = now_ns()
                    await deliver(name, payload, offset, epoch, trace)
            finally:
                histories.settle()
            return
        # One publish at a time per queue channel: each may wait for room, and two waiting
        # together must not take the same number.
        lock = self._queue_locks.get(name)
        if lock is None:
            lock = self._queue_locks[name] = trio.Lock()
        try:
            lock.acquire_nowait()  # the common case, without a checkpoint
        except trio.WouldBlock:
            await lock.acquire()
        try:
            seq = self._last_seq.get(name, 0)
            try:
                for payload in payloads:
                    # Numbered once delivered: a publish cancelled while it waits (a full
                    # queue) takes no number, so none is skipped.
                    await deliver(name, payload, seq + 1, "", None)
                    seq += 1
                    published.append(seq)
            finally:
                if seq:
                    self._last_seq[name] = seq
        finally:
            lock.release()

    async def recover(self, name: str, since: Position | None) -> Recovery:
        """Read the channel's history (no checkpoint: nothing is published meanwhile)."""
        settings = self._settings
        config = settings.channel_config(name)
        histories = self.histories
        history = histories.state(name, config, read=True)
        position = history.position
        if since is None:
            return Recovery(position, recovered=False)
        reason = recovery_reason(
            since,
            history.epoch,
            history.offset,
            config,
            expired=history.expired_for(since, trio.current_time()),
            recovery_max_messages=settings.recovery_max_messages,
        )
        if reason is None and since.offset < history.offset:
            entries, sizes = histories.read(history, since.offset)
            reason = reason_after_reading(
                since, history.offset, entries, sizes, config.history_bytes
            )
            if reason is None:
                return Recovery(position, recovered=True, entries=tuple(entries))
        return Recovery(position, recovered=reason is None, reason=reason)

    def queue(self, name: str) -> None:
        """The hub's own queue serves queue channels."""

    def jobs(self, name: str) -> None:
        """The hub's own job queue serves acked queue channels."""

    def watch(self, name: str) -> None:
        """Nothing to do: the local channel is the only one."""

    def unwatch(self, name: str) -> None:
        """Nothing to do: the local channel is the only one."""

    async def wait_watching(self, name: str) -> None:
        """Return at once (no checkpoint): local delivery needs no subscription."""

    def forget(self, name: str) -> None:
        self._last_seq.pop(name, None)
        self._queue_locks.pop(name, None)
        self.histories.forget(name)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    @property
    def ready(self) -> bool:
        return True

    def want_ready(self) -> None:
        """Always ready."""

    def statistics(self) -> dict[str, Any]:
        histories = self.histories
        return {
            "kind": "memory",
            "ready": True,
            "histories": len(histories),
            "history_bytes": histories.bytes,
            "history_trimmed": histories.trimmed,
        }
