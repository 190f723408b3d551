"""Stored draws seen flat over chains index like the flat NumPy array."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import zarr

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
