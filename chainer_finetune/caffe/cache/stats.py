"""This process's counters of cache use (hits, misses, writes...)."""

from __future__ import annotations

import threading
from typing import Dict, NamedTuple


class CacheStats(NamedTuple):
    """Counters of this process's cache use (see :func:`cache_stats`).

    Attributes:
        hits: Nets loaded from the cache.
        misses: Nets converted because no valid entry existed.
        writes: Entries written.
        corrupt: Entries found truncated or corrupt (then rebuilt).
        hashed_files: Input files read to compute their SHA-256.
        hashed_bytes: Bytes read for that.
        errors: Times the cache was skipped (unusable directory, failed
            write, lock timeout).
        waits: Times an entry's lock was held by another process.
    """

    hits: int = 0
    misses: int = 0
    writes: int = 0
    corrupt: int = 0
    hashed_files: int = 0
    hashed_bytes: int = 0
    errors: int = 0
    waits: int = 0


_stats: Dict[str, int] = dict(CacheStats()._asdict())
_stats_lock = threading.Lock()


def count(name: str, n: int = 1) -> None:
    """Adds ``n`` to the counter ``name`` (a :class:`CacheStats` field)."""
    with _stats_lock:
        _stats[name] += n


def cache_stats() -> CacheStats:
    """This process's cache counters (hits, misses, writes...)."""
    with _stats_lock:
        return CacheStats(**_stats)
