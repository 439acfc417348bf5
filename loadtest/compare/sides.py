"""The sides a comparison measures, by name (I/O-free).

A *side* is one server setup the same job runs against, on fresh processes every run (see
:mod:`loadtest.compare.deployments` for what each one starts): ``triorelay`` (the in-memory
broker), ``asyncio`` (the baseline: FastAPI and one global queue), ``asyncio-broadcast``
(the asyncio fan-out side: the broadcast loop of FastAPI's tutorial), ``triorelay+redis``
(one relay on a Redis broker: every message goes through Redis and back),
``triorelay+redis-2relays`` (two relays on one Redis, producers on the first, consumers on the
second), ``triorelay+redis-idle`` (``triorelay+redis`` with idle consumers, one per channel,
connected before the run: what watched channels nobody publishes to cost), ``triorelay-idle``
(the in-memory relay with the same idle consumers: what they cost without Redis),
``triorelay+tokens`` (the in-memory relay requiring tokens, every client presenting one),
``triorelay-nohistory`` (the in-memory relay keeping no channel history: ``triorelay`` keeps
its default one) and ``triorelay-notracing`` (the in-memory relay timing no message's
stages: ``triorelay`` samples its default share).
"""

from __future__ import annotations

from typing import Final

MEMORY: Final = "triorelay"
BASELINE: Final = "asyncio"
BROADCAST: Final = "asyncio-broadcast"
REDIS: Final = "triorelay+redis"
REDIS_2RELAYS: Final = "triorelay+redis-2relays"
REDIS_IDLE: Final = "triorelay+redis-idle"
MEMORY_IDLE: Final = "triorelay-idle"
TOKENS: Final = "triorelay+tokens"
NOHISTORY: Final = "triorelay-nohistory"
NOTRACING: Final = "triorelay-notracing"
#: The original two sides (the default of a job), in the order they run.
SIDES: Final = (MEMORY, BASELINE)
#: The asyncio sides (no triorelay settings apply to them).
ASYNCIO_SIDES: Final = (BASELINE, BROADCAST)
#: The sides on a Redis broker.
REDIS_SIDES: Final = (REDIS, REDIS_2RELAYS, REDIS_IDLE)
#: The Redis sides a comparison runs unless ``--redis-sides`` says otherwise.
DEFAULT_REDIS_SIDES: Final = (REDIS, REDIS_2RELAYS)
#: The sides only a flag adds (``--tokens``, ``--history``, ``--tracing``), in run order.
OPT_IN_SIDES: Final = (TOKENS, NOHISTORY, NOTRACING)
#: Every side, in the order they run within each job of a repeat (A B C D A B C D ...). The
#: opt-in sides run right after the relay they are compared with, so drift of the machine
#: between them is smallest.
ALL_SIDES: Final = (MEMORY, *OPT_IN_SIDES, MEMORY_IDLE, BASELINE, BROADCAST, *REDIS_SIDES)
#: The sides that hold idle consumers through each run (``--redis-sides`` with
#: ``triorelay+redis-idle`` runs both).
IDLE_SIDES: Final = (MEMORY_IDLE, REDIS_IDLE)
#: The sides a comparison runs without ``--tokens``, ``--history``, ``--tracing`` or
#: ``--redis-sides``, in run order.
DEFAULT_SIDES: Final = tuple(
    side for side in ALL_SIDES if side not in OPT_IN_SIDES and side not in IDLE_SIDES
)
