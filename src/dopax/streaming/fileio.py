"""Writing chunk files, bypassing the operating system's page cache where possible.

Streamed results are written once and rarely read back at once, yet a normal
``write`` first copies every byte into the page cache, allocating fresh pages
as it goes. On virtual machines that allocation is expensive: buffered
writes can cost an order of magnitude more system CPU per byte than the same
bytes written with ``O_DIRECT`` (which moves them from a user buffer straight
to the device), so for an output-bound call the writes would cost about as
much CPU as the sampling itself.

``O_DIRECT`` needs the buffer, the file offset and the length aligned to the
device's block size. :meth:`FileWriter.write` copies the data through a small
page-aligned buffer per thread (a few MB, reused, so resident memory does not
grow), pads the last piece with zeros and truncates the file to the true
length afterwards. Filesystems that refuse ``O_DIRECT`` (``tmpfs``, some
network filesystems) and platforms without it fall back to ordinary writes,
once per :class:`FileWriter`.

A file may end with the CRC-32C of the bytes before it (the :data:`CRC32C`
piece, which Zarr's ``crc32c`` codec expects after a chunk): the direct path
computes it a megabyte at a time as it copies the bytes into its buffer,
while they are still in the processor's cache, which costs a fraction of a
second pass over data read back from memory.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import struct
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np

__all__ = ["CRC32C", "FileWriter"]

logger = logging.getLogger("dopax")

#: Alignment of buffer, offsets and lengths for direct writes (covers 512-byte
#: and 4 KiB logical blocks).
_ALIGN = 4096

_O_DIRECT: int = getattr(os, "O_DIRECT", 0)
#: Bytes copied (and checksummed) at a time: they stay in cache between the two.
_STEP = 2**20


class _Checksum:
    """The piece :data:`CRC32C`."""

    def __repr__(self) -> str:
        return "CRC32C"


#: A piece of :meth:`FileWriter.write` standing for the CRC-32C (four bytes,
#: little-endian) of every byte written before it.
CRC32C = _Checksum()


def _bytes(part: Any) -> np.ndarray:
    return np.frombuffer(memoryview(part).cast("B"), dtype=np.uint8)


def _resolved(parts: Sequence[Any]) -> list[np.ndarray]:
    """The pieces as bytes, each :data:`CRC32C` replaced by the checksum of those before it."""
    out: list[np.ndarray] = []
    crc = 0
    for part in parts:
        if part is CRC32C:
            out.append(np.frombuffer(struct.pack("<I", crc), dtype=np.uint8))
            continue
        data = _bytes(part)
        crc = google_crc32c.extend(crc, data) if data.size else crc
        out.append(data)
    return out


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
            *more: Further pieces written after ``data``: buffers, or
                :data:`CRC32C` for the checksum of every byte before it.
        """
        parts = (data, *more)
        if self._direct:
            try:
                self._write_direct(path, parts)
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
            for piece in _resolved(parts):
                f.write(piece.data)

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

    def _write_direct(self, path: Path, parts: Sequence[Any]) -> None:
        buf = self._buffer()
        total = sum(4 if p is CRC32C else _bytes(p).size for p in parts)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_DIRECT, 0o644)
        try:
            offset, n, crc = 0, 0, 0  # file offset of buf[0], bytes in buf, checksum so far
            for part in parts:
                checked = part is not CRC32C
                src = _bytes(part) if checked else _bytes(struct.pack("<I", crc))
                pos = 0
                while pos < src.size:
                    take = min(self._piece - n, src.size - pos, _STEP)
                    piece = buf[n : n + take]
                    piece[:] = src[pos : pos + take]
                    if checked:
                        crc = google_crc32c.extend(crc, piece)
                    n, pos = n + take, pos + take
                    if n == self._piece:
                        if not self._put(fd, path, buf, n, offset, parts):
                            return
                        offset, n = offset + n, 0
            if n:
                self._put(fd, path, buf, n, offset, parts)
            if total % _ALIGN:
                os.ftruncate(fd, total)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)

    def _put(
        self, fd: int, path: Path, buf: np.ndarray, n: int, offset: int, parts: Sequence[Any]
    ) -> bool:
        """Write ``buf[:n]`` (padded) at ``offset``; return ``False`` if the rest went buffered."""
        padded = -(-n // _ALIGN) * _ALIGN
        if padded != n:
            buf[n:padded] = 0
        written = os.pwrite(fd, buf[:padded].data, offset)
        if written == padded:
            return True
        # A short direct write (tmpfs that is full, some network filesystems)
        # says nothing of why: the rest goes through the page cache, which
        # succeeds or raises the real error (ENOSPC).
        self._write_rest(path, _resolved(parts), offset + min(written, n))
        return False
