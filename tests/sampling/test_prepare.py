"""Inputs read block by block (:class:`dopax.sampling.prepare.LazyRows`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest
import zarr

from dopax.sampling.prepare import LazyRows, read_rows

X = np.random.default_rng(0).standard_normal((1000, 3)).astype(np.float32)


class CountingSource:
    """A Zarr array that records the row spans read from it."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.shape = array.shape
        self.dtype = array.dtype
        self.chunks = getattr(array, "chunks", None)
        self.reads: list[tuple[int, int]] = []

    def __getitem__(self, index: slice) -> np.ndarray:
        self.reads.append((index.start, index.stop))
        return np.asarray(self.array[index])


def _zarr(tmp_path: Path, chunk_rows: int) -> Any:
    arr = zarr.create_array(tmp_path / "X.zarr", shape=X.shape, chunks=(chunk_rows, 3), dtype="f4")
    arr[:] = X
    return arr


def _blocks(n_rows: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, n_rows)) for start in range(0, n_rows, size)]


@pytest.mark.parametrize("block", [7, 128, 300, 1000])
def test_blocks_read_from_zarr_equal_the_array(block: int, tmp_path: Path) -> None:
    lazy = LazyRows(_zarr(tmp_path, 128), "X")
    for start, stop in _blocks(1000, block):
        np.testing.assert_array_equal(read_rows(lazy, start, stop), X[start:stop])
    np.testing.assert_array_equal(read_rows(lazy, 5, 5), X[5:5])


def test_each_chunk_is_read_once_for_small_blocks(tmp_path: Path) -> None:
    source = CountingSource(_zarr(tmp_path, 128))
    lazy = LazyRows(source, "X")
    for start, stop in _blocks(1000, 7):
        np.testing.assert_array_equal(read_rows(lazy, start, stop), X[start:stop])
    # Whole chunks, each read once, except where a block straddles two chunks.
    assert all(a % 128 == 0 and (b % 128 == 0 or b == 1000) for a, b in source.reads)
    assert len(source.reads) <= 2 * (-(-1000 // 128))
    covered = np.zeros(1000, dtype=int)
    for a, b in source.reads:
        covered[a:b] += 1
    assert covered.min() >= 1
    assert covered.max() <= 2


def test_uneven_dask_chunks(tmp_path: Path) -> None:
    lazy = LazyRows(da.from_array(X, chunks=((100, 400, 500), 3)), "X")
    for start, stop in [(0, 7), (7, 300), (450, 520), (990, 1000)]:
        np.testing.assert_array_equal(read_rows(lazy, start, stop), X[start:stop])


def test_chunks_larger_than_the_window_are_read_row_by_block(tmp_path: Path) -> None:
    # 128 rows x 3 float32 = 1536 bytes per chunk; a 1 KB window cannot hold one,
    # so each block is read as asked and nothing is kept.
    source = CountingSource(_zarr(tmp_path, 128))
    lazy = LazyRows(source, "X", window_bytes=1024)
    for start, stop in _blocks(1000, 7):
        np.testing.assert_array_equal(read_rows(lazy, start, stop), X[start:stop])
    assert source.reads == _blocks(1000, 7)


def test_unchunked_sources_are_read_as_asked(tmp_path: Path) -> None:
    mm = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype="f4", shape=X.shape)
    mm[:] = X
    source = CountingSource(mm)
    lazy = LazyRows(source, "X")
    np.testing.assert_array_equal(read_rows(lazy, 10, 17), X[10:17])
    assert source.reads == [(10, 17)]
