"""How connections and the relay live and end: bounded closes, dead peers, one shutdown entry,
and the garbage collector's pace while it serves."""

from triorelay.lifecycle.collector import pace_full_collections
from triorelay.lifecycle.liveness import Liveness
from triorelay.lifecycle.reaper import CloseReaper
from triorelay.lifecycle.shutdown import SHUTDOWN_REASON, Shutdown, watch_signals, watch_supervisor

__all__ = [
    "SHUTDOWN_REASON",
    "CloseReaper",
    "Liveness",
    "Shutdown",
    "pace_full_collections",
    "watch_signals",
    "watch_supervisor",
]
