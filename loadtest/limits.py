"""Process resource limits of the generator (and of the servers ``compare`` starts, which
inherit them), and how often it collects its oldest generation."""

from __future__ import annotations

import gc
import resource

#: The generator collects its oldest generation at most once per this many collections of the
#: middle one (CPython 3.11's default: 10), as the relay does by default
#: (``triorelay.lifecycle.collector``): each full collection scans every connection the
#: generator holds, and at 10 they come one after another while it connects. Measured here
#: (5,000 lean connections, one core each side): seven full collections took 1.24 s of the
#: generator's 8.6 s of CPU and capped the connect rate at 671/s; at 100, none, 6.6 s, 897/s.
FULL_COLLECTION_THRESHOLD = 100


def pace_full_collections() -> None:
    """Set the generator's third collection threshold to ``FULL_COLLECTION_THRESHOLD`` (the
    first two, the young generations', stay as they are)."""
    first, second, _ = gc.get_threshold()
    gc.set_threshold(first, second, FULL_COLLECTION_THRESHOLD)


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft open-files limit towards ``wanted`` (capped by the hard limit); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft
