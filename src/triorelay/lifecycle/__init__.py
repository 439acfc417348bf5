"""How connections and the relay end: bounded closes, dead peers, one shutdown entry."""

from triorelay.lifecycle.liveness import Liveness
from triorelay.lifecycle.reaper import CloseReaper
from triorelay.lifecycle.shutdown import SHUTDOWN_REASON, Shutdown, watch_signals, watch_supervisor

__all__ = [
    "SHUTDOWN_REASON",
    "CloseReaper",
    "Liveness",
    "Shutdown",
    "watch_signals",
    "watch_supervisor",
]
