"""Order statistics inside compiled programs: the draws themselves, bit for bit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dopax.reductions.order import (
    TILE_ROWS,
    Chosen,
    order_statistics,
    quantile_plan,
    tail_sizes,
    tails,
)


def _sorted_at(x: np.ndarray, ranks: list[int]) -> dict[int, np.ndarray]:
    ordered = np.sort(x, axis=0)
    return {r: ordered[r] for r in ranks}


def _selected(x: np.ndarray, ranks: list[int]) -> dict[int, np.ndarray]:
    fn = jax.jit(lambda v: {r: order_statistics(v, ranks).rank(r) for r in ranks})
    return {r: np.asarray(a) for r, a in fn(jnp.asarray(x)).items()}


@pytest.mark.parametrize("shape", [(1000, 3 * TILE_ROWS + 5), (257, 4, 33), (40,), (7, 1)])
def test_chosen_ranks_equal_the_sorted_draws(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    n = shape[0]
    ranks = sorted({0, 1, n // 33, n // 33 + 1, n // 2, n - 2, n - 1})
    got, want = _selected(x, ranks), _sorted_at(x, ranks)
    for r in ranks:
        assert got[r].shape == shape[1:]
        np.testing.assert_array_equal(got[r], want[r])
    # on this machine's CPU the ranks are counted, not read from ordered tails
    assert isinstance(order_statistics(jnp.asarray(x), ranks), Chosen)


def test_ties_zeros_infinities_and_subnormals() -> None:
    rng = np.random.default_rng(1)
    n, rows = 300, 200
    counts = rng.poisson(0.3, size=(n, rows)).astype(np.float32)  # mostly ties at 0
    special = np.array(
        [0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45, 3.4e38, -3.4e38, 1.0, -1.0], np.float32
    )
    mixed = rng.choice(special, size=(n, rows)).astype(np.float32)
    ranks = [0, 8, 9, 10, 149, 150, 290, 291, 299]
    for x in (counts, mixed):
        got, want = _selected(x, ranks), _sorted_at(x, ranks)
        for r in ranks:
            # -0.0 and 0.0 tie; any of them is the order statistic
            np.testing.assert_array_equal(got[r], want[r])


def test_counting_agrees_with_the_ordered_tails() -> None:
    x = jax.random.gamma(jax.random.key(3), 2.0, (1000, 700)).astype(jnp.float32)
    n = 1000
    ranks = []
    for p in (0.03, 0.97, 0.05, 0.5):
        plan = quantile_plan(n, p)
        ranks += [plan.below, plan.above]
    probs = (0.03, 0.97, 0.05, 0.5)

    @jax.jit
    def both(v: jax.Array) -> tuple[list[jax.Array], list[jax.Array]]:
        counted = order_statistics(v, ranks)
        ordered = tails(jnp.moveaxis(v, 0, -1), *tail_sizes(n, ranks))
        plans = [quantile_plan(n, p) for p in probs]
        return [counted.quantile(q) for q in plans], [ordered.quantile(q) for q in plans]

    counted, ordered = both(x)
    for p, a, b in zip(probs, counted, ordered, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, np.quantile(np.asarray(x), p, axis=0), rtol=2e-6)


def test_a_rank_outside_the_draws_is_refused() -> None:
    x = jnp.zeros((10, 3), jnp.float32)
    with pytest.raises(ValueError, match=r"must lie in \[0, 10\)"):
        order_statistics(x, [3, 10])
    with pytest.raises(ValueError, match="was not chosen"):
        order_statistics(x, [3]).rank(4)
