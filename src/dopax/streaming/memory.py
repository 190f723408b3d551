"""Returning freed heap memory to the operating system between chunks.

Chunk buffers are large and short-lived, and allocators keep freed memory in
per-thread arenas, so without help a long streamed call's resident memory
creeps up with the number of chunks even though the live data stays bounded.
On glibc, ``malloc_trim(0)`` after each chunk gives the free pages back
(measured in ``BENCHMARKS.md``); elsewhere this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Callable

__all__ = ["release_free_memory"]


@functools.cache
def _trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


def release_free_memory() -> None:
    """Give freed heap memory back to the operating system, where the C library allows."""
    fn = _trim()
    if fn is not None:
        fn(0)
