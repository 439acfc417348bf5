"""Channel histories: when a resume can be done, and the memory broker's bounded rings. No I/O.

:func:`recovery_reason` is the one decision every broker makes the same way: given where the
consumer was, where the channel is, and what its history still holds, can every message in
between be replayed, and if not, why not. :class:`MemoryHistories` is the memory broker's
store: a bounded ring per channel inside one relay-wide byte budget.
"""

from __future__ import annotations

import itertools
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence

from triorelay.envelopes import Payload
from triorelay.framing import Position, RecoveryReason
from triorelay.settings import ChannelConfig

#: What one kept message costs besides its payload (its two deque slots, its size's int, the
#: payload object's header), counted against ``history_max_bytes`` (``history_bytes`` counts
#: payloads alone, as the Redis broker's history does).
ENTRY_OVERHEAD_BYTES = 100
#: What one channel's state costs besides its messages (the object, its deque, the name and
#: epoch, the dict slot), counted against ``history_max_bytes``.
CHANNEL_OVERHEAD_BYTES = 1024


def recovery_reason(
    since: Position,
    epoch: str,
    top: int,
    config: ChannelConfig,
    *,
    expired: bool,
    recovery_max_messages: int,
) -> RecoveryReason | None:
    """Why the messages after ``since`` cannot be replayed, checked before reading them;
    ``None``: read them, then check what was read with :func:`reason_after_reading`.

    ``epoch`` and ``top`` are the channel's epoch and last offset; ``expired``: its history
    expired (no publish for ``history_ttl_seconds``).
    """
    if since.epoch != epoch:
        return "epoch"
    if since.offset > top:
        return "future"
    if since.offset == top:
        return None  # nothing missed
    if not config.keeps_history:
        return "disabled"
    if expired:
        return "expired"
    missed = top - since.offset
    if missed > config.history_messages:
        return "trimmed"
    if missed > recovery_max_messages:
        return "too_many"
    return None


def history_expired(
    since: Position, top: int, expired_through: int, idle_seconds: float, ttl_seconds: float
) -> bool:
    """Whether messages after ``since`` were let go because the channel's history expired:
    they were let go already (through offset ``expired_through``), or the channel has been
    idle past its TTL with messages after ``since`` (its last offset being ``top``)."""
    return since.offset < expired_through or (idle_seconds > ttl_seconds and since.offset < top)


def reason_after_reading(
    since: Position, top: int, entries: Sequence[tuple[int, Payload]], sizes: int, limit: int
) -> RecoveryReason | None:
    """Whether what was read (``entries``, ``sizes`` bytes in all) is every message after
    ``since`` up to ``top``, within the channel's ``history_bytes`` (``limit``)."""
    if len(entries) != top - since.offset or (entries and entries[0][0] != since.offset + 1):
        return "trimmed"  # the broker no longer holds the oldest of them
    if sizes > limit:
        return "trimmed"  # older than the last history_bytes of the channel
    return None


def new_epoch() -> str:
    """An epoch nobody has seen: 12 random hex digits."""
    return secrets.token_hex(6)


class ChannelHistory:
    """One channel's position and kept messages (memory broker)."""

    __slots__ = (
        "bytes",
        "config",
        "dropped",
        "entries",
        "epoch",
        "expired_through",
        "last_publish",
        "name",
        "offset",
        "sizes",
    )

    def __init__(self, name: str, config: ChannelConfig, now: float) -> None:
        self.name = name
        self.config = config
        self.epoch = new_epoch()
        #: The last offset given out.
        self.offset = 0
        #: The kept messages, oldest first, and their sizes: offsets are contiguous, so the
        #: oldest one's is all that is stored (no object per message beyond the payload).
        self.entries: deque[Payload] = deque()
        self.sizes: deque[int] = deque()
        self.bytes = 0
        self.last_publish = now
        #: The offset through which messages were let go because the history expired.
        self.expired_through = 0
        #: Let go of (its relay-wide budget, its meta TTL): a publish under way keeps nothing.
        self.dropped = False

    @property
    def position(self) -> Position:
        return Position(self.epoch, self.offset)

    def expired_for(self, since: Position, now: float) -> bool:
        """Whether messages after ``since`` were let go because the history expired."""
        return history_expired(
            since,
            self.offset,
            self.expired_through,
            now - self.last_publish,
            self.config.history_ttl_seconds,
        )


class MemoryHistories:
    """Every channel's history in this process, within ``max_bytes`` in all.

    A channel's state (its epoch and last offset) is made on its first publish or resume and
    kept ``meta_ttl_seconds`` after its last publish; its messages are kept within its
    channel's ``history_*`` bounds. When all of them together pass ``max_bytes``, the channels
    published to least recently lose their oldest messages first, then their states (a later
    resume then sees a new epoch): trimmed, never silently wrong.

    Expiry is lazy: each append looks at the state published to least recently, and a read
    checks its own channel's. ``clock`` gives the time (trio's, so tests can autojump it).
    """

    def __init__(self, max_bytes: int, meta_ttl_seconds: float, clock: Callable[[], float]) -> None:
        self.max_bytes = max_bytes
        self.meta_ttl_seconds = meta_ttl_seconds
        self._clock = clock
        #: Least recently published first.
        self._channels: OrderedDict[str, ChannelHistory] = OrderedDict()
        self.bytes = 0
        #: Messages let go to keep within max_bytes (not counting the channels' own bounds).
        self.trimmed = 0

    def __len__(self) -> int:
        return len(self._channels)

    def state(self, name: str, config: ChannelConfig, *, read: bool = False) -> ChannelHistory:
        """Channel ``name``'s state, made (with a new epoch) if it has none.

        ``read``: made for a subscriber, not a publish: it goes first in line for the budget
        (as if published to least recently), so that subscribing to many channels nobody
        publishes to can push out only such states, never a real history.
        """
        history = self.get(name)
        if history is None:
            history = ChannelHistory(name, config, self._clock())
            self.bytes += CHANNEL_OVERHEAD_BYTES
            self._keep_within_budget()  # before it is held: never drops the one made
            self._channels[name] = history
            if read:
                self._channels.move_to_end(name, last=False)
        return history

    def get(self, name: str) -> ChannelHistory | None:
        """Channel ``name``'s state, if it has one (after letting go of what expired)."""
        history = self._channels.get(name)
        if history is not None:
            self._expire(history)
        return self._channels.get(name)

    def held(self, name: str) -> ChannelHistory | None:
        """Channel ``name``'s state as it is (no expiry: :meth:`append` does its own)."""
        return self._channels.get(name)

    def touch(self, history: ChannelHistory) -> None:
        """A publish to ``history``'s channel begins: expire what it held past its TTL, mark
        it published to now, and let the channel published to least recently expire. Once
        per producer read, then :meth:`keep` per message, then :meth:`settle`."""
        now = self._clock()
        if now - history.last_publish > history.config.history_ttl_seconds and history.entries:
            self._expire_messages(history)  # its state stays: it is being published to
        history.last_publish = now
        channels = self._channels
        channels.move_to_end(history.name)
        oldest = next(iter(channels.values()))
        if oldest is not history:
            self._expire(oldest, now)

    def keep(self, history: ChannelHistory, payload: Payload) -> int:
        """Give ``payload`` the channel's next offset and keep it within the channel's
        bounds; return the offset. (Runs per message: the bookkeeping is written out.)"""
        offset = history.offset = history.offset + 1
        config = history.config
        if not config.history_messages or history.dropped:
            return offset
        if type(payload) is str and not payload.isascii():  # size_of, inlined
            size = len(payload.encode("utf-8", "surrogatepass"))
        else:
            size = len(payload)
        # ``history_bytes`` counts payloads (as Redis's history does), ``max_bytes`` their
        # overhead too.
        entries, sizes = history.entries, history.sizes
        entries.append(payload)
        sizes.append(size)
        history.bytes += size
        self.bytes += size + ENTRY_OVERHEAD_BYTES
        max_messages, max_bytes = config.history_messages, config.history_bytes
        while entries and (len(entries) > max_messages or history.bytes > max_bytes):
            entries.popleft()
            size = sizes.popleft()
            history.bytes -= size
            self.bytes -= size + ENTRY_OVERHEAD_BYTES
        return offset

    def settle(self) -> None:
        """A publish is done: back within ``max_bytes`` (so it is passed by at most one
        producer read's messages, for as long as the read is delivered)."""
        if self.bytes > self.max_bytes:
            self._keep_within_budget()

    def _pop_oldest(self, history: ChannelHistory) -> None:
        history.entries.popleft()
        size = history.sizes.popleft()
        history.bytes -= size
        self.bytes -= size + ENTRY_OVERHEAD_BYTES

    def _expire(self, history: ChannelHistory, now: float | None = None) -> None:
        """Let go of ``history``'s messages past their TTL, and of its state past the meta TTL."""
        if now is None:
            now = self._clock()
        idle = now - history.last_publish
        if idle > history.config.history_ttl_seconds and history.entries:
            self._expire_messages(history)
        if idle > self.meta_ttl_seconds:
            self._drop_state(history)

    def _expire_messages(self, history: ChannelHistory) -> None:
        while history.entries:
            self._pop_oldest(history)
        history.expired_through = history.offset

    def _drop_state(self, history: ChannelHistory) -> None:
        while history.entries:
            self._pop_oldest(history)
        history.dropped = True
        del self._channels[history.name]
        self.bytes -= CHANNEL_OVERHEAD_BYTES

    def _keep_within_budget(self) -> None:
        channels = self._channels
        while self.bytes > self.max_bytes and channels:
            name, history = next(iter(channels.items()))
            if history.entries:
                self._pop_oldest(history)
                self.trimmed += 1
            else:
                history.dropped = True
                del channels[name]
                self.bytes -= CHANNEL_OVERHEAD_BYTES

    def forget(self, name: str) -> None:
        """Drop channel ``name``'s state if it keeps no history (nothing to resume from)."""
        history = self._channels.get(name)
        if history is not None and not history.config.history_messages:
            history.dropped = True
            del self._channels[name]
            self.bytes -= CHANNEL_OVERHEAD_BYTES

    def read(self, history: ChannelHistory, after: int) -> tuple[list[tuple[int, Payload]], int]:
        """The kept messages after offset ``after``, and their sizes' sum."""
        entries = history.entries
        first = history.offset - len(entries) + 1  # the oldest kept one's offset
        if not entries or history.offset <= after:
            return [], 0
        skip = max(0, after + 1 - first)
        kept = itertools.islice(entries, skip, None)
        size = sum(itertools.islice(history.sizes, skip, None))
        return [(first + skip + i, payload) for i, payload in enumerate(kept)], size
