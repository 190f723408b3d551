"""Writing chunk files, bypassing the operating system's page cache where possible.

Streamed results are written once and rarely read back at once, yet a normal
``write`` first copies every byte into the page cache, allocating fresh pages
as it goes. On virtual machines that allocation is expensive: on the machine
of ``BENCHMARKS.md`` buffered writes cost about 1.9 s of system CPU per GB,
against 0.1 s per GB for the same bytes written with ``O_DIRECT`` (which
moves them from a user buffer straight to the device). For an output-bound
call such as W1 (8 GB persisted) that is the difference between the writes
costing as much CPU as the sampling itself and costing almost nothing.

``O_DIRECT`` needs the buffer, the file offset and the length aligned to the
device's block size. :meth:`FileWriter.write` copies the data through a small
page-aligned buffer per thread (a few MB, reused, so resident memory does not
grow), pads the last piece with zeros and truncates the file to the true
length afterwards. Filesystems that refuse ``O_DIRECT`` (``tmpfs``, some
network filesystems) and platforms without it fall back to ordinary writes,
once per :class:`FileWriter`.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FileWriter"]

logger = logging.getLogger("dopax")

#: Alignment of buffer, offsets and lengths for direct writes (covers 512-byte
#: and 4 KiB logical blocks).
_ALIGN = 4096

_O_DIRECT: int = getattr(os, "O_DIRECT", 0)


class FileWriter:
    """Write whole files, with ``O_DIRECT`` when allowed and asked for.

    Thread-safe: each thread has its own aligned buffer.

    Args:
        direct: Try ``O_DIRECT`` writes (Linux); falls back to buffered writes
            for good at the first refusal.
        piece_bytes: Size of the aligned buffer each direct write goes
            through (a multiple of 4096).
    """

    def __init__(self, direct: bool = True, piece_bytes: int = 8 * 2**20) -> None:
        self._direct = bool(direct and _O_DIRECT)
        self._piece = int(piece_bytes)
        self._local = threading.local()
        self._lock = threading.Lock()

    @property
    def direct(self) -> bool:
        """Whether writes currently bypass the page cache."""
        return self._direct

    def write(self, path: Path, data: Any, *more: Any) -> None:
        """Write ``data`` (any contiguous buffer), then ``more``, to a new file at ``path``.

        Args:
            path: The file to create or replace.
            data: The bytes to write (``bytes``, ``memoryview`` or a contiguous
                array).
            *more: Further buffers written after ``data`` (a chunk's checksum).
        """
        views = [memoryview(d).cast("B") for d in (data, *more)]
        if self._direct:
            try:
                self._write_direct(path, views)
                return
            except OSError as err:
                if err.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
                    raise
                with self._lock:
                    if self._direct:
                        logger.debug(
                            "Direct I/O refused at %s (%s); writing through the page cache.",
                            path.parent,
                            err,
                        )
                    self._direct = False
        with open(path, "wb") as f:
            for view in views:
                f.write(view)

    def _buffer(self) -> np.ndarray:
        buf = getattr(self._local, "buf", None)
        if buf is None:
            # An anonymous map is page aligned, which satisfies the alignment.
            raw = mmap.mmap(-1, self._piece)
            buf = np.frombuffer(raw, dtype=np.uint8)
            self._local.raw = raw
            self._local.buf = buf
        return buf  # type: ignore[no-any-return]

    @staticmethod
    def _write_rest(path: Path, srcs: list[np.ndarray], start: int) -> None:
        """Write the bytes of ``srcs`` (one after the other) from offset ``start`` on.

        Written through the page cache.
        """
        fd = os.open(path, os.O_WRONLY)
        try:
            base = 0
            for src in srcs:
                offset = max(start, base)
                while offset < base + src.size:
                    offset += os.pwrite(fd, src[offset - base :].data, offset)
                base += src.size
        finally:
            os.close(fd)

    def _write_direct(self, path: Path, views: list[memoryview]) -> None:
        buf = self._buffer()
        srcs = [np.frombuffer(v, dtype=np.uint8) for v in views]
        total = sum(src.size for src in srcs)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_DIRECT, 0o644)
        try:
            offset = 0
            part, pos = 0, 0  # where the next byte comes from
            while offset < total:
                n = 0
                while n < self._piece and part < len(srcs):
                    take = min(self._piece - n, srcs[part].size - pos)
                    buf[n : n + take] = srcs[part][pos : pos + take]
                    n, pos = n + take, pos + take
                    if pos == srcs[part].size:
                        part, pos = part + 1, 0
                padded = -(-n // _ALIGN) * _ALIGN
                if padded != n:
                    buf[n:padded] = 0
                written = os.pwrite(fd, buf[:padded].data, offset)
                if written != padded:
                    # A short direct write (tmpfs that is full, some network
                    # filesystems) says nothing of why: the rest goes through the
                    # page cache, which succeeds or raises the real error (ENOSPC).
                    self._write_rest(path, srcs, offset + min(written, n))
                    offset = total
                    break
                offset += n
            if total % _ALIGN:
                os.ftruncate(fd, total)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
