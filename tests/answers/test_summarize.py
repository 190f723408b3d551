"""``summarize``: per-row answers equal NumPy's on the same draws, whatever the blocks.

And the order statistics behind them: the draws themselves, bit for bit.
"""

from __future__ import annotations

from typing import Any

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.optim import Adam
from scipy import stats

from answers.models import N_DRAWS, fit, linear, simulate
from dopax import ImpactModel, open_result
from dopax.effects.stats import hdi
from dopax.reductions.order import (
    TILE_ROWS,
    Chosen,
    order_statistics,
    quantile_plan,
    tail_sizes,
    tails,
)

KEY = jax.random.key(7)


def _draws(model: ImpactModel, X: np.ndarray, **kw: Any) -> dict[str, np.ndarray]:
    out = model.predict_on_batch(X, rng_key=KEY, return_datatree=False, **kw)
    assert isinstance(out, dict)
    return out


def _close_to_float32(got: Any, want: np.ndarray, scale: float = 1.0) -> None:
    """Equal to float32 rounding of values of magnitude ``scale``."""
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-6, atol=4e-6 * scale)


def test_summaries_equal_numpy_on_predict_on_batch_draws(linear_fit: Any, tmp_path: Any) -> None:
    model, X, _y = linear_fit
    tree = model.summarize(
        X, rng_key=KEY, quantiles=(0.05, 0.5), batch_size=64, output_dir=tmp_path,
        progress=False,
    )  # fmt: skip
    draws = _draws(model, X)
    s = tree["summary"]
    for site in ("y", "mu"):
        d = draws[site].astype(np.float64)
        scale = float(np.abs(d).max())
        _close_to_float32(s[f"{site}_mean"], d.mean(0), scale)
        _close_to_float32(s[f"{site}_sd"], d.std(0, ddof=1), scale)
        low, high, q05, q50 = np.quantile(draws[site], [0.03, 0.97, 0.05, 0.5], axis=0)
        _close_to_float32(s[f"{site}_lower"], low, scale)
        _close_to_float32(s[f"{site}_upper"], high, scale)
        _close_to_float32(s[f"{site}_q0.05"], q05, scale)
        _close_to_float32(s[f"{site}_q0.5"], q50, scale)
        assert s[f"{site}_q0.5"].dims == (f"{site}_dim_0",)
    assert set(s.data_vars) == {
        f"{site}_{stat}"
        for site in ("y", "mu")
        for stat in ("mean", "sd", "lower", "upper", "q0.05", "q0.5")
    }
    assert "y_pit" not in s.data_vars and "coverage" not in tree.attrs
    # nothing but rows: a persisted, reopenable result chunked like its blocks
    reopened = open_result(tree.attrs["artifact_path"])
    assert reopened["summary"]["y_mean"].encoding["chunks"] == (64,)
    np.testing.assert_array_equal(reopened["summary"]["mu_q0.5"], s["mu_q0.5"])
    assert reopened.attrs["method"] == "summarize" and reopened.attrs["num_draws"] == N_DRAWS


def test_order_statistics_are_the_draws_themselves(linear_fit: Any) -> None:
    model, X, _ = linear_fit
    # probabilities whose quantile falls exactly on a draw: no interpolation at all
    probs = (0.0, 1.0, 1 / (N_DRAWS - 1), 7 / (N_DRAWS - 1))
    tree = model.summarize(X[:50], rng_key=KEY, quantiles=probs, store="memory", progress=False)
    ordered = np.sort(_draws(model, X[:50])["y"], axis=0)
    for rank, p in zip((0, N_DRAWS - 1, 1, 7), probs, strict=True):
        # equal on CPU; on a GPU the two programs' draws may differ in their last bit
        np.testing.assert_allclose(
            tree["summary"][f"y_q{p:g}"].values, ordered[rank], rtol=1e-6, atol=0
        )


def test_hdi_is_the_narrowest_window_of_the_draws(linear_fit: Any) -> None:
    model, X, _ = linear_fit
    tree = model.summarize(
        X[:60], rng_key=KEY, interval="hdi", prob=0.8, store="memory", progress=False
    )
    draws = _draws(model, X[:60])
    for site in ("y", "mu"):
        want = hdi(draws[site], prob=0.8, axis=0)
        # equal on CPU; on a GPU the two programs' draws may differ in their last bit
        np.testing.assert_allclose(tree["summary"][f"{site}_lower"].values, want[:, 0], rtol=1e-6)
        np.testing.assert_allclose(tree["summary"][f"{site}_upper"].values, want[:, 1], rtol=1e-6)
        ref = az.hdi(draws[site][None].astype(np.float64), hdi_prob=0.8)
        np.testing.assert_allclose(tree["summary"][f"{site}_lower"].values, ref[:, 0])
    assert tree.attrs["interval"] == "hdi" and tree.attrs["prob"] == 0.8


def test_pit_and_coverage_from_the_same_draws(linear_fit: Any) -> None:
    model, X, y = linear_fit
    tree = model.summarize(X, y, rng_key=KEY, batch_size=50, store="memory", progress=False)
    draws = _draws(model, X)["y"]
    np.testing.assert_allclose(tree["summary"]["y_pit"].values, (draws < y).mean(0), atol=1e-7)
    low, high = tree["summary"]["y_lower"].values, tree["summary"]["y_upper"].values
    assert tree.attrs["coverage"] == pytest.approx(np.mean((y >= low) & (y <= high)), abs=1e-12)
    assert tree.attrs["observed"] == "y"


def test_results_do_not_depend_on_the_blocks(linear_fit: Any) -> None:
    model, X, y = linear_fit
    runs = [
        model.summarize(X, y, rng_key=KEY, batch_size=b, store=store, progress=False)
        for b, store in ((None, "zarr"), (7, "memory"), (128, "persistent"))
    ]
    first = runs[0]["summary"].to_dataset().load()
    for other in runs[1:]:
        ds = other["summary"].to_dataset().load()
        for name in first.data_vars:
            np.testing.assert_allclose(ds[name], first[name], rtol=1e-6, atol=1e-6, err_msg=name)
        assert other.attrs["coverage"] == pytest.approx(runs[0].attrs["coverage"])
    assert {run.attrs["batch_size"] for run in runs} >= {7, 128}


def test_discrete_pit_breaks_ties_with_the_rows_key(counts_fit: Any) -> None:
    model, X, y = counts_fit
    draws = _draws(model, X)["y"]
    below, ties = (draws < y).mean(0), (draws == y).mean(0)
    a = model.summarize(X, y, rng_key=KEY, batch_size=33, store="memory", progress=False)
    b = model.summarize(X, y, rng_key=KEY, batch_size=400, store="memory", progress=False)
    c = model.summarize(
        X, y, rng_key=jax.random.key(8), batch_size=33, store="memory", progress=False
    )
    pit = a["summary"]["y_pit"].values
    assert np.all(pit >= below - 1e-7) and np.all(pit <= below + ties + 1e-7)
    # the tie-breaking uniform is the row's: the same whatever the blocks, new with a new key
    np.testing.assert_array_equal(pit, b["summary"]["y_pit"].values)
    tied = ties > 0
    assert tied.mean() > 0.5
    u = (pit[tied] - below[tied]) / ties[tied]
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    assert not np.array_equal(pit, c["summary"]["y_pit"].values)
    # the expectation site is summarised too, as float32
    assert a["summary"]["rate_mean"].dtype == np.float32


def test_calibration_of_well_and_misspecified_models() -> None:
    X, y = simulate(3000, seed=3, noise=1.0)
    right = fit(linear, X, y, steps=800)
    tree = right.summarize(X, y, rng_key=KEY, store="memory", progress=False)
    pit = tree["summary"]["y_pit"].values
    assert stats.kstest(pit, "uniform").pvalue > 0.01
    assert tree.attrs["coverage"] == pytest.approx(0.94, abs=0.02)

    def too_sure(X: Any, y: Any = None) -> None:  # noise sd fixed at a third of the truth
        alpha = numpyro.sample("alpha", dist.Normal(0.0, 5.0))
        beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
        with numpyro.plate("obs", X.shape[0]):
            numpyro.sample("y", dist.Normal(alpha + X @ beta, 0.33), obs=y)

    wrong = ImpactModel(
        too_sure, jax.random.key(0), SVI(too_sure, AutoNormal(too_sure), Adam(0.05), Trace_ELBO())
    )
    wrong.fit_on_batch(X, y, num_steps=800, num_samples=N_DRAWS, progress=False)
    bad = wrong.summarize(X, y, rng_key=KEY, store="memory", progress=False)
    assert stats.kstest(bad["summary"]["y_pit"].values, "uniform").pvalue < 1e-6
    assert bad.attrs["coverage"] < 0.5


def test_sites_without_rows_are_summarised_once() -> None:
    def with_total(X: Any, y: Any = None) -> None:
        alpha = numpyro.sample("alpha", dist.Normal(0.0, 1.0))
        numpyro.deterministic("double", 2.0 * alpha)
        with numpyro.plate("obs", X.shape[0]):
            numpyro.sample("y", dist.Normal(alpha + X[:, 0], 1.0), obs=y)

    X, y = simulate(40)
    model = fit(with_total, X, y, steps=100)
    tree = model.summarize(X, rng_key=KEY, batch_size=16, progress=False)
    draws = _draws(model, X)
    assert tree["summary"]["double_mean"].shape == ()
    assert float(tree["summary"]["double_mean"]) == pytest.approx(draws["double"].mean(), 1e-5)
    np.testing.assert_allclose(tree["summary"]["y_mean"], draws["y"].mean(0), rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"prob": 1.0}, ValueError, "`prob` must lie strictly between 0 and 1"),
        ({"prob": "0.9"}, TypeError, "`prob` must be a number"),
        ({"interval": "hpd"}, ValueError, "`interval` must be one of"),
        ({"quantiles": (0.5, 1.5)}, ValueError, "`quantiles` must lie in"),
        ({"quantiles": "0.5"}, TypeError, "`quantiles` must be a sequence"),
        ({"store": "disk"}, ValueError, "`store` must be 'zarr'"),
        ({"store": "memory", "output_dir": "x"}, ValueError, "`output_dir` is given"),
        ({"batch_size": 0}, ValueError, "batch_size"),
    ],
)
def test_bad_arguments_are_named(linear_fit: Any, kwargs: Any, error: Any, match: str) -> None:
    model, X, _ = linear_fit
    with pytest.raises(error, match=match):
        model.summarize(X, progress=False, **kwargs)


def test_observed_output_must_fit_the_site(linear_fit: Any) -> None:
    model, X, y = linear_fit
    with pytest.raises(ValueError, match=r"`y` must hold the observed 'y'.*got \(399,\)"):
        model.summarize(X, y[:-1], progress=False)
    with pytest.raises(ValueError, match="add it to `return_sites`"):
        model.summarize(X, y, return_sites=["mu"], progress=False)


def test_per_row_latents_stream_by_rows_into_summaries() -> None:
    def latent(X: Any, y: Any = None) -> None:
        b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
        with numpyro.plate("obs", X.shape[0]):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0))
            numpyro.sample("y", dist.Normal(X @ b + 0.5 * z, 0.5), obs=y)

    X, y = simulate(90)
    rng = np.random.default_rng(4)
    model = ImpactModel(
        latent, jax.random.key(0), SVI(latent, AutoNormal(latent), Adam(0.05), Trace_ELBO())
    )
    model.set_posterior_sample(
        {
            "b": rng.normal(size=(60, 3)).astype(np.float32),
            "z": rng.normal(size=(60, 90)).astype(np.float32),
        }
    )
    draws = _draws(model, X)["y"]
    for batch_size in (16, None):
        tree = model.summarize(X, y, rng_key=KEY, batch_size=batch_size, store="memory",
                               progress=False)  # fmt: skip
        assert tree.attrs["path"] == "rows"
        s = tree["summary"]
        np.testing.assert_allclose(s["y_mean"], draws.mean(0), rtol=1e-5, atol=1e-6)
        low, high = np.quantile(draws, [0.03, 0.97], axis=0)
        np.testing.assert_allclose(s["y_lower"], low, rtol=2e-6, atol=1e-6)
        np.testing.assert_allclose(s["y_upper"], high, rtol=2e-6, atol=1e-6)
        np.testing.assert_allclose(s["y_pit"], (draws < y).mean(0), atol=1e-7)


# The order statistics behind the intervals and quantiles: the draws themselves,
# bit for bit, found by counting on a CPU.


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


def _awkward_draws(rng: np.random.Generator, n: int, rows: int) -> dict[str, np.ndarray]:
    """Draws far from the normal guess the search starts from."""
    two_modes = np.where(rng.random((n, rows)) < 0.9, 0.0, 50.0) + rng.standard_normal((n, rows))
    return {
        "cauchy": rng.standard_cauchy((n, rows)),
        "lognormal": np.exp(3.0 * rng.standard_normal((n, rows))),
        "two modes": two_modes,
        "counts": rng.poisson(2.0, (n, rows)).astype(float),
        "two values": rng.choice([-1.0, 1e30], size=(n, rows)),
        "constant rows": np.broadcast_to(rng.standard_normal(rows), (n, rows)),
        "huge": rng.choice([3.4e38, -3.4e38, 1e-40, 0.0], size=(n, rows)) * rng.random((n, rows)),
        "infinite": np.where(rng.random((n, rows)) < 0.01, np.inf, rng.standard_normal((n, rows))),
        "not a number": np.where(rng.random((n, rows)) < 0.01, np.nan, rng.random((n, rows))),
        # NaNs as a CPU computes them (log(-1), inf - inf) carry the sign bit
        "signed not a number": np.where(
            rng.random((n, rows)) < 0.3, -np.nan, rng.random((n, rows))
        ),
    }


@pytest.mark.parametrize("n", [1000, 3])
def test_search_finds_ranks_of_awkward_distributions(n: int) -> None:
    rng = np.random.default_rng(5)
    ranks = sorted({0, 1, n * 3 // 100, n * 3 // 100 + 1, n // 2, n - 2, n - 1})
    for name, x in _awkward_draws(rng, n, 150).items():
        x = x.astype(np.float32)
        got, want = _selected(x, ranks), _sorted_at(x, ranks)
        for r in ranks:
            np.testing.assert_array_equal(got[r], want[r], err_msg=f"{name}, rank {r}")


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
