"""Keeping resident memory close to live memory while chunks stream.

Chunk buffers are large and short-lived. glibc serves an allocation from its
heap arenas unless it is at least the mmap threshold, and it raises that
threshold (up to 32 MiB) each time a mapped block is freed, so buffers of a few
tens of MiB soon land in arenas that keep their high-water mark resident long
after the buffers are freed. :func:`map_large_allocations` fixes the threshold
at ``ExecutionConfig.mmap_threshold_bytes``: every buffer at least that large gets its own
mapping and goes back to the operating system the moment it is freed. That
keeps memory flat without trimming the heap after every chunk, which costs
CPU on every chunk. The threshold is low (1 MiB) so that buffers of a few MB
allocated in other threads' arenas (an input chunk read from Zarr is one) are
mapped too. What is left in the arenas is returned every so many bytes
written (:class:`~dopax.streaming.pipeline.WriterPool`).
Elsewhere than glibc both functions do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys
from typing import Any

__all__ = ["map_large_allocations", "release_free_memory"]

logger = logging.getLogger("dopax")

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


@functools.cache
def _libc() -> Any | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):  # not glibc
        return None
    return libc


_MAPPED: list[bool] = []


def map_large_allocations(threshold: int) -> bool:
    """Serve allocations of ``threshold`` bytes or more from their own mappings.

    Applies to the whole process, once (later calls do nothing, whatever
    their threshold), and only on glibc. Returns whether the setting took
    effect.

    Args:
        threshold: The mmap threshold in bytes.
    """
    if _MAPPED:
        return _MAPPED[0]
    libc = _libc()
    if libc is None:
        _MAPPED.append(False)
        return False
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    logger.debug("mallopt(M_MMAP_THRESHOLD, %d): %s", threshold, ok)
    _MAPPED.append(ok)
    return ok


def release_free_memory() -> None:
    """Give freed heap memory back to the operating system, where the C library allows."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
