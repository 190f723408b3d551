"""Stored draws seen flat over chains index like the flat NumPy array."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
import zarr.storage

from dopax.inference import posterior
from dopax.inference.posterior import ChainMajorDraws, Posterior

BY_CHAIN = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
FLAT = BY_CHAIN.reshape(10, 3)


@pytest.mark.parametrize(
    "key",
    [
        slice(3, 8),  # across the chain boundary
        slice(None),
        slice(9, 3),  # empty
        7,
        np.array([0, 9, 4]),
        (7, 1),
        (slice(2, 6), 2),
        (np.array([1, 8]), slice(0, 2)),
    ],
)
def test_indexing_matches_the_flat_array(key: Any) -> None:
    draws = ChainMajorDraws(zarr.array(BY_CHAIN))
    np.testing.assert_array_equal(draws[key], FLAT[key])


def test_shape_reading_and_by_chain() -> None:
    stored = zarr.array(BY_CHAIN)
    draws = ChainMajorDraws(stored)
    assert draws.shape == (10, 3) and len(draws) == 10 and draws.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(draws), FLAT)
    posterior = Posterior({"w": draws, "s": FLAT[:, 0]}, num_chains=2)
    assert posterior.num_draws == 10
    assert posterior.by_chain()["w"] is stored  # handed on unread
    np.testing.assert_array_equal(posterior.by_chain()["s"], BY_CHAIN[:, :, 0])
    np.testing.assert_array_equal(posterior.in_memory()["w"], FLAT)


@pytest.mark.parametrize("piece_bytes", [1, 24, 1 << 20])  # a chunk, two chunks, everything
def test_reads_in_pieces_match_the_flat_array(
    piece_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(posterior, "READ_PIECE_BYTES", piece_bytes)
    stored = zarr.create_array(store={}, shape=BY_CHAIN.shape, chunks=(1, 2, 3), dtype="f4")
    stored[:] = BY_CHAIN
    draws = ChainMajorDraws(stored)
    for key in (slice(0, 10), slice(1, 9), slice(4, 6), (slice(3, 8), 2)):
        np.testing.assert_array_equal(draws[key], FLAT[key])
    # index arrays: unsorted, repeated, negative, across chains, within one chunk
    for index in ([9, 0, 4, 4, 5], [-1, 3, 2], [5, 6], [8], [0, 2, 4, 6, 8]):
        np.testing.assert_array_equal(draws[np.array(index)], FLAT[np.array(index)])
    assert draws[np.array([], dtype=np.int64)].shape == (0, 3)
    np.testing.assert_array_equal(draws.block(1, 9, 1, slice(1, 3), 0), FLAT[1:9, 1:3])


def _stored(folder: Path, seed: int) -> tuple[ChainMajorDraws, np.ndarray]:
    """Draws of 2 chains x 400 x 10,000 values (32 MB) stored in 400 KB chunks, and their values."""
    shape = (2, 400, 10_000)
    stored = zarr.create_array(
        store=zarr.storage.LocalStore(folder), shape=shape, chunks=(1, 10, 10_000), dtype="f4"
    )
    values = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    stored[:] = values
    return ChainMajorDraws(zarr.open_array(folder, mode="r")), values.reshape(-1, shape[2])


def _peak(read: Any) -> tuple[np.ndarray, int]:
    """Return what ``read()`` returns and the peak of memory allocated meanwhile."""
    tracemalloc.start()
    try:
        out = read()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_block_of_draws_costs_the_block_and_a_few_pieces(tmp_path: Path) -> None:
    draws, flat = _stored(tmp_path / "w", seed=0)
    block, peak = _peak(lambda: draws[100:700])  # 24 MB across both chains
    np.testing.assert_array_equal(block, flat[100:700])
    # Zarr holds a read's chunks as stored and decoded: read whole, the block
    # would cost three to four times its size; in pieces, the block and two
    # pieces (and a megabyte of Zarr's own).
    assert peak < block.nbytes + 2 * posterior.READ_PIECE_BYTES + (1 << 20), (peak, block.nbytes)


def test_chosen_draws_cost_their_chunks_not_the_span_between_them(tmp_path: Path) -> None:
    draws, flat = _stored(tmp_path / "w", seed=1)
    index = np.array([395, 3, 399, 3, 405, 799])  # both ends of both chains, a repeat
    picked, peak = _peak(lambda: draws[index])
    np.testing.assert_array_equal(picked, flat[index])
    # a 400 KB chunk at a time (read as stored and decoded; 1.2 MB measured),
    # not the 16 MB from the first to the last draw of each chain (24 MB)
    chunk = 10 * 10_000 * 4
    assert peak < picked.nbytes + 6 * chunk, peak
