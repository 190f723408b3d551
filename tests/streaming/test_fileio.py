"""Chunk files written with and without direct I/O hold exactly the bytes given."""

import errno
import os
import struct
import threading
from pathlib import Path

import google_crc32c
import numpy as np
import pytest

from dopax.streaming.fileio import CRC32C, FileWriter

SIZES = [0, 1, 511, 4095, 4096, 4097, 8 * 2**20, 8 * 2**20 + 12345]


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("size", SIZES)
def test_written_file_holds_the_bytes(tmp_path: Path, direct: bool, size: int) -> None:
    data = np.random.default_rng(size).integers(0, 256, size=size, dtype=np.uint8)
    writer = FileWriter(direct=direct)
    path = tmp_path / "chunk"
    writer.write(path, data)
    assert path.stat().st_size == size
    np.testing.assert_array_equal(np.fromfile(path, dtype=np.uint8), data)


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("size", SIZES)
def test_pieces_are_written_one_after_the_other(tmp_path: Path, direct: bool, size: int) -> None:
    # a chunk and its four checksum bytes, without joining them first
    data = np.random.default_rng(size).integers(0, 256, size=size, dtype=np.uint8)
    tail = b"\x01\x02\x03\x04"
    path = tmp_path / "chunk"
    FileWriter(direct=direct, piece_bytes=2**20).write(path, data, tail, b"")
    assert path.read_bytes() == data.tobytes() + tail


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("size", SIZES)
def test_the_checksum_piece_is_the_crc32c_of_the_bytes_before_it(
    tmp_path: Path, direct: bool, size: int
) -> None:
    data = np.random.default_rng(size).integers(0, 256, size=size, dtype=np.uint8)
    path = tmp_path / "chunk"
    FileWriter(direct=direct, piece_bytes=2**20).write(path, data[:7], data[7:], CRC32C)
    crc = struct.pack("<I", google_crc32c.value(data.tobytes()))
    assert path.read_bytes() == data.tobytes() + crc


def test_a_short_direct_write_finishes_through_the_page_cache(tmp_path, monkeypatch) -> None:
    real = os.pwrite
    calls = []

    def short_once(fd, data, offset):
        calls.append(offset)
        if len(calls) == 2:  # the second piece: half of it goes down
            return real(fd, bytes(data)[: len(data) // 2], offset)
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", short_once)
    data = np.random.default_rng(1).integers(0, 256, size=3 * 2**20 + 5, dtype=np.uint8)
    path = tmp_path / "chunk"
    FileWriter(direct=True, piece_bytes=2**20).write(path, data, b"tail", CRC32C)
    monkeypatch.undo()
    body = data.tobytes() + b"tail"
    assert path.read_bytes() == body + struct.pack("<I", google_crc32c.value(body))


def test_arrays_and_bytes_are_written_in_memory_order(tmp_path: Path) -> None:
    array = np.arange(3000, dtype="<f4").reshape(30, 100)
    writer = FileWriter()
    writer.write(tmp_path / "a", array)
    writer.write(tmp_path / "b", array.tobytes())
    assert (tmp_path / "a").read_bytes() == array.tobytes() == (tmp_path / "b").read_bytes()


def test_replacing_a_longer_file_truncates_it(tmp_path: Path) -> None:
    path = tmp_path / "chunk"
    path.write_bytes(b"x" * 100_000)
    FileWriter().write(path, b"short")
    assert path.read_bytes() == b"short"


def test_concurrent_writers_do_not_mix_buffers(tmp_path: Path) -> None:
    writer = FileWriter()
    payloads = {i: bytes([i]) * (3 * 2**20 + i) for i in range(8)}

    def work(i: int) -> None:
        writer.write(tmp_path / str(i), payloads[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, payload in payloads.items():
        assert (tmp_path / str(i)).read_bytes() == payload


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs a tmpfs at /dev/shm")
def test_tmpfs_folder_is_written_correctly(tmp_path: Path) -> None:
    # Older kernels refuse O_DIRECT on tmpfs, newer ones accept it: either way
    # the bytes must arrive.
    folder = Path("/dev/shm") / f"dopax-test-{os.getpid()}"
    folder.mkdir()
    try:
        FileWriter(direct=True).write(folder / "chunk", b"abc" * 5000)
        assert (folder / "chunk").read_bytes() == b"abc" * 5000
    finally:
        for child in folder.iterdir():
            child.unlink()
        folder.rmdir()


class RefusingFileWriter(FileWriter):
    """A writer on a filesystem that refuses direct I/O (the OS's EINVAL, injected)."""

    def _write_direct(self, path: Path, views: list[memoryview]) -> None:
        path.write_bytes(b"partial")  # what a refused write may leave behind
        path.unlink()
        raise OSError(errno.EINVAL, "Invalid argument", str(path))


def test_refused_direct_io_falls_back_once_and_writes_the_bytes(tmp_path: Path) -> None:
    writer = RefusingFileWriter(direct=True)
    writer.write(tmp_path / "a", b"hello" * 1000)
    assert not writer.direct
    writer.write(tmp_path / "b", b"world")
    assert (tmp_path / "a").read_bytes() == b"hello" * 1000
    assert (tmp_path / "b").read_bytes() == b"world"


def test_other_os_errors_propagate(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        FileWriter(direct=True).write(tmp_path / "missing" / "chunk", b"x")
