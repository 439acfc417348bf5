"""The in-process broker: publishing is delivering into the local channel."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from triorelay.connections import Payload
    from triorelay.hub import Channel, Hub


class MemoryBroker:
    """One process, no network: :meth:`publish` hands the message straight to the channel."""

    async def publish(self, channel: Channel, payload: Payload, size: int) -> int:
        return await channel.publish(payload, size)

    async def publish_many(
        self, channel: Channel, payloads: list[Payload], published: list[int]
    ) -> None:
        for payload in payloads:
            published.append(await channel.publish(payload, len(payload)))

    def queue(self, name: str) -> None:
        """The hub's own queue serves queue channels."""

    def watch(self, name: str) -> None:
        """Nothing to do: the local channel is the only one."""

    def unwatch(self, name: str) -> None:
        """Nothing to do: the local channel is the only one."""

    async def wait_watching(self, name: str) -> None:
        """Return at once (no checkpoint): local delivery needs no subscription."""

    async def run(
        self, hub: Hub, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        await trio.sleep_forever()

    @property
    def ready(self) -> bool:
        return True

    def statistics(self) -> dict[str, Any]:
        return {"kind": "memory", "ready": True}
