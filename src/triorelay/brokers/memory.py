"""The in-process broker: publishing is delivering into the local channel."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from triorelay.hub import Channel, Payload


class MemoryBroker:
    """One process, no network: :meth:`publish` hands the message straight to the channel."""

    async def publish(self, channel: Channel, payload: Payload, size: int) -> int:
        return await channel.publish(payload, size)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    @property
    def ready(self) -> bool:
        return True
