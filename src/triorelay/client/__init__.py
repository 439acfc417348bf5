"""The Python client: subscribe to a channel across reconnections, publish to one, work
through the jobs of an acked queue.

On trio and trio-websocket::

    from triorelay.client import publish, subscribe

    offsets = await publish("ws://127.0.0.1:8000", "chat", ["hello", b"\\x00bytes"])

    async with subscribe("ws://127.0.0.1:8000", "chat", since="1733090000123:41") as sub:
        async for message in sub:
            print(message.position, message.payload)

    async with consume_jobs("ws://127.0.0.1:8000", "jobs") as jobs:
        async for job in jobs:
            await work(job.payload)
            await job.ack()

- :func:`subscribe` reads with the ``triorelay.v1`` framing (``docs/reference/framing.md``),
  keeps its position, reconnects with backoff and resumes without loss or duplicates where the
  relay's history allows, and reports what it could not recover (:data:`Event`).
- :func:`open_publisher` and :func:`publish` publish with ``?ack=id``: each message is
  answered with its offset.
- :func:`consume_jobs` reads an acked queue channel (``ack = "explicit"``): each job to ack
  or nack, reconnecting with backoff and forgetting the jobs of a connection that ended (the
  relay gave them back); :func:`read_dead_letter` reads what its dead-letter channel gets.
- The exceptions are in :mod:`triorelay.client.errors`; the I/O-free parts in
  :mod:`triorelay.client.stream` (frames and positions) and
  :mod:`triorelay.client.backoff` (delays).

``docs/reference/client.md`` is the reference.
"""

from triorelay.client.backoff import Backoff
from triorelay.client.connection import Token, TokenProvider
from triorelay.client.errors import (
    ClientError,
    Closed,
    ConnectionFailed,
    ProtocolError,
    RecoveryFailed,
    Rejected,
)
from triorelay.client.jobs import (
    DeadLetter,
    DeliveryEnd,
    JobEvent,
    Jobs,
    JobsStatistics,
    JobsSubscribed,
    ReceivedJob,
    Refused,
    consume_jobs,
    read_dead_letter,
)
from triorelay.client.publish import Ack, Publisher, PublisherStatistics, open_publisher, publish
from triorelay.client.stream import (
    Dropped,
    Event,
    Gap,
    ReceivedMessage,
    Reconnecting,
    Subscribed,
)
from triorelay.client.subscribe import Subscription, SubscriptionStatistics, subscribe
from triorelay.framing import Position

__all__ = [
    "Ack",
    "Backoff",
    "ClientError",
    "Closed",
    "ConnectionFailed",
    "DeadLetter",
    "DeliveryEnd",
    "Dropped",
    "Event",
    "Gap",
    "JobEvent",
    "Jobs",
    "JobsStatistics",
    "JobsSubscribed",
    "Position",
    "ProtocolError",
    "Publisher",
    "PublisherStatistics",
    "ReceivedJob",
    "ReceivedMessage",
    "Reconnecting",
    "RecoveryFailed",
    "Refused",
    "Rejected",
    "Subscribed",
    "Subscription",
    "SubscriptionStatistics",
    "Token",
    "TokenProvider",
    "consume_jobs",
    "open_publisher",
    "publish",
    "read_dead_letter",
    "subscribe",
]
