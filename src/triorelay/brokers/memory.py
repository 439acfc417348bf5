"""The in-process broker: publishing is delivering to this relay's own channel."""

from __future__ import annotations

from typing import Any

import trio

from triorelay.brokers.base import Deliver
from triorelay.envelopes import Payload
from triorelay.settings import Mode


class MemoryBroker:
    """One process, no network: :meth:`publish` numbers each message and delivers it at once.

    It keeps one number per live channel, the last sequence number given out; the hub tells it
    when a channel goes (:meth:`forget`), so a channel made again numbers from 1.
    """

    delivers_locally = True

    def __init__(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._last_seq: dict[str, int] = {}

    async def publish(
        self, name: str, mode: Mode, payloads: list[Payload], published: list[int]
    ) -> None:
        deliver = self._deliver
        seq = self._last_seq.get(name, 0)
        try:
            for payload in payloads:
                # Numbered once delivered: a publish cancelled while it waits (``block``, a
                # full queue) takes no number, so none is skipped. (Under ``block``, the
                # consumers with room may already have it: at least once for them.)
                await deliver(name, payload)
                seq += 1
                published.append(seq)
        finally:
            if seq:
                self._last_seq[name] = seq

    def queue(self, name: str) -> None:
        """The hub's own queue serves queue channels."""

    def watch(self, name: str) -> None:
        """Nothing to do: the local channel is the only one."""

    def unwatch(self, name: str) -> None:
        """Nothing to do: the local channel is the only one."""

    async def wait_watching(self, name: str) -> None:
        """Return at once (no checkpoint): local delivery needs no subscription."""

    def forget(self, name: str) -> None:
        self._last_seq.pop(name, None)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    @property
    def ready(self) -> bool:
        return True

    def want_ready(self) -> None:
        """Always ready."""

    def statistics(self) -> dict[str, Any]:
        return {"kind": "memory", "ready": True}
