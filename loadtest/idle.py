"""``python -m loadtest idle``: hold N idle consumers, each on a channel of its own, until killed.

What a relay on Redis pays for channels it watches while nobody publishes to them: ``compare``
starts one of these before a measured run of its ``triorelay+redis-idle`` side
(:mod:`loadtest.compare.runner`), waits for the line :data:`READY` on its stdout, and kills it
after the run, so the idle consumers' connects are outside the measured CPU and only their
presence is inside. Each consumer is a :class:`~loadtest.lean.LeanWebSocket` reading its
socket (answering pings) on channel ``{prefix}{i}``.
"""

from __future__ import annotations

import functools
import logging
from typing import Final

import trio

from loadtest.endpoints import endpoint_url
from loadtest.lean import CONSUMER_ERRORS, LeanWebSocket

logger = logging.getLogger(__name__)

#: The line printed (then flushed) once every idle consumer is connected.
READY: Final = "idle consumers connected"
#: The channel names' default prefix (channel ``idle.0``, ``idle.1``, ...).
PREFIX: Final = "idle."


class _Connected:
    """How many idle consumers are connected, and an event once all ``wanted`` are."""

    def __init__(self, wanted: int) -> None:
        self.wanted = wanted
        self.count = 0
        self.all = trio.Event()

    def one_more(self) -> None:
        self.count += 1
        if self.count >= self.wanted:
            self.all.set()


async def _hold(
    url: str, limiter: trio.CapacityLimiter, timeout_s: float, connected: _Connected
) -> None:
    async with limiter:
        lean = await LeanWebSocket.open(url, connect_timeout_s=timeout_s)
    connected.one_more()
    try:
        await lean.pump()
    except CONSUMER_ERRORS as exc:
        logger.warning("an idle consumer ended: %r", exc)
    finally:
        await lean.aclose()


async def hold_idle_channels(
    url: str,
    channels: int,
    *,
    prefix: str = PREFIX,
    connect_concurrency: int = 64,
    connect_timeout_s: float = 30.0,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Connect ``channels`` consumers under ``url``, one per channel ``{prefix}{i}``; report
    ``started()`` once all are connected; hold them until cancelled.

    At most ``connect_concurrency`` handshakes at once. A failed connect raises (one of
    :data:`~loadtest.lean.LEAN_CONNECT_ERRORS`) and ends them all: the count would be wrong.
    """
    limiter = trio.CapacityLimiter(connect_concurrency)
    connected = _Connected(channels)
    async with trio.open_nursery() as nursery:
        for i in range(channels):
            target = endpoint_url(url, "consumer", f"{prefix}{i}")
            nursery.start_soon(_hold, target, limiter, connect_timeout_s, connected)
        if channels:
            await connected.all.wait()
        task_status.started()


async def run_idle(url: str, channels: int, *, prefix: str, connect_concurrency: int) -> None:
    """Hold the idle consumers, printing :data:`READY` once all are connected, until killed."""
    async with trio.open_nursery() as nursery:
        hold = functools.partial(
            hold_idle_channels,
            url,
            channels,
            prefix=prefix,
            connect_concurrency=connect_concurrency,
        )
        await nursery.start(hold)
        print(READY, flush=True)
