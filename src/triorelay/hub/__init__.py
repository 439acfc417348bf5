"""The hub: channels, consumer buffers and their statistics. No I/O.

:class:`Hub` (``hub.py``) holds the live channels; :class:`~triorelay.hub.channel.Channel`
delivers by mode and slow-consumer policy into :mod:`~triorelay.hub.buffers`;
:mod:`~triorelay.hub.connections` is what the hub knows of each producer and consumer;
:mod:`~triorelay.hub.statistics` holds the counters and their snapshots.
"""

from triorelay.hub.buffers import Entry, Item, Traced, Unfinished, WriteManyNow, WriteNow
from triorelay.hub.channel import Channel
from triorelay.hub.connections import Connection, Consumer, Producer
from triorelay.hub.hub import MAX_CHANNEL_NAME_LENGTH, Attachment, Hub, validate_channel_name
from triorelay.hub.statistics import ChannelStatistics, ConnectionStatistics, Traffic

__all__ = [
    "MAX_CHANNEL_NAME_LENGTH",
    "Attachment",
    "Channel",
    "ChannelStatistics",
    "Connection",
    "ConnectionStatistics",
    "Consumer",
    "Entry",
    "Hub",
    "Item",
    "Producer",
    "Traced",
    "Traffic",
    "Unfinished",
    "WriteManyNow",
    "WriteNow",
    "validate_channel_name",
]
