"""``loo``: PSIS-LOO block by block agrees with ArviZ on the same log-likelihood draws."""

from __future__ import annotations

import warnings
from typing import Any

import arviz as az
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import xarray as xr
import zarr
from numpyro.infer import MCMC, NUTS

from answers.models import N_DRAWS, linear
from dopax import ImpactModel
from dopax.answers import loo as loo_module
from dopax.inference.posterior import ChainMajorDraws, Posterior
from dopax.reductions.psis import psis_loo, tail_length


def _arviz_loo(tree: xr.DataTree) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # ArviZ's own high-k note
        return az.loo(az.from_datatree(tree), pointwise=True)


def _agrees(ours: Any, ref: Any) -> None:
    assert ours.elpd_loo == pytest.approx(ref.elpd_loo, rel=1e-4)
    assert ours.p_loo == pytest.approx(ref.p_loo, rel=1e-3, abs=1e-3)
    assert ours.se == pytest.approx(ref.se, rel=1e-4)
    assert (ours.n_samples, ours.n_data_points) == (ref.n_samples, ref.n_data_points)
    assert ours.good_k == pytest.approx(ref.good_k) and ours.scale == ref.scale == "log"
    assert ours.warning == ref.warning
    assert _k_agreement(ours.pareto_k.values, ref.pareto_k.values) >= 0.999
    np.testing.assert_allclose(ours.loo_i.values, ref.loo_i.values, rtol=1e-4, atol=1e-4)
    assert ours.loo_i.dims == ref.loo_i.dims


def _k_agreement(k: np.ndarray, k_ref: np.ndarray) -> float:
    """Share of rows whose Pareto k is within 0.02 of ArviZ's (both infinite counts too)."""
    both_inf = np.isinf(k) & np.isinf(k_ref)
    finite = np.isfinite(k) & np.isfinite(k_ref)
    close = np.zeros(k.shape, bool)
    close[finite] = np.abs(k[finite] - k_ref[finite]) <= 0.02
    return float(np.mean(close | both_inf))


def _heavy_tailed(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the linear model with Student-t(2) noise: outliers give large Pareto k."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)).astype(np.float32)
    y = (0.5 + X @ np.array([1.0, -0.5, 0.25]) + rng.standard_t(2, n)).astype(np.float32)
    return X, y


def test_loo_agrees_with_arviz_on_the_same_draws(linear_fit: Any, tmp_path: Any) -> None:
    model, X, y = linear_fit
    X, y = X.copy(), y.copy()
    y[:5] += np.float32(6.0)  # a few outliers, for Pareto k over the whole range
    with pytest.warns(UserWarning, match=r"of 400 observations have an estimated Pareto k"):
        ours = model.loo(X, y, batch_size=57, output_dir=tmp_path, progress=False)
    ref = _arviz_loo(model.log_likelihood(X, y, progress=False))
    _agrees(ours, ref)
    assert ours.warning and np.sum(ours.pareto_k.values > ours.good_k) >= 1
    # the pointwise values are read from the result when asked for, not held
    assert not isinstance(ours.loo_i.variable._data, np.ndarray)
    assert str(tmp_path) in ours.loo_i.encoding.get("source", "") or any(tmp_path.iterdir())
    text = str(ours)
    assert "elpd_loo" in text and "Pareto k diagnostic values" in text


def test_loo_does_not_depend_on_the_blocks(linear_fit: Any) -> None:
    model, X, y = linear_fit
    a = model.loo(X, y, batch_size=400, store="memory", progress=False)
    b = model.loo(X, y, batch_size=13, progress=False)
    np.testing.assert_allclose(a.loo_i.values, b.loo_i.values, rtol=1e-6, atol=1e-6)
    # the fit's float32 sums may round differently with another block shape
    np.testing.assert_allclose(a.pareto_k.values, b.pareto_k.values, atol=1e-4)
    assert a.elpd_loo == pytest.approx(b.elpd_loo, rel=1e-6)


def test_compare_and_plot_khat_take_two_loo_results(linear_fit: Any) -> None:
    model, X, y = linear_fit

    def constant(X: Any, y: Any = None) -> None:  # ignores the predictors
        alpha = numpyro.sample("alpha", dist.Normal(0.0, 5.0))
        sigma = numpyro.sample("sigma", dist.HalfNormal(3.0))
        with numpyro.plate("obs", X.shape[0]):
            numpyro.sample("y", dist.Normal(alpha, sigma), obs=y)

    from answers.models import fit

    flat = fit(constant, X, y, steps=400)
    results = {
        "linear": model.loo(X, y, progress=False),
        "constant": flat.loo(X, y, progress=False),
    }
    with warnings.catch_warnings():
        # ArviZ 0.23 sorts with pandas' deprecated `inplace=` (not dopax's to fix)
        warnings.filterwarnings("ignore", message="The inplace keyword")
        table = az.compare(results)
    assert list(table.index) == ["linear", "constant"]
    assert table.loc["constant", "elpd_diff"] > 0 and table.loc["constant", "dse"] > 0
    with warnings.catch_warnings():
        # ArviZ 0.23 calls a Matplotlib helper deprecated in 3.11
        warnings.simplefilter("ignore", matplotlib.MatplotlibDeprecationWarning)
        ax = az.plot_khat(results["linear"])
    assert len(ax.collections) >= 1


def test_loo_of_mcmc_chains_uses_their_relative_ess() -> None:
    X, y = _heavy_tailed(120, seed=4)
    model = ImpactModel(
        linear,
        jax.random.key(1),
        MCMC(NUTS(linear), num_warmup=100, num_samples=100, num_chains=2, progress_bar=False,
             chain_method="sequential"),
    )  # fmt: skip
    model.fit_on_batch(X, y, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ours = model.loo(X, y, batch_size=50, progress=False)
    ref = _arviz_loo(model.log_likelihood(X, y, progress=False))
    _agrees(ours, ref)
    assert ours.n_samples == 200


class _Reads:
    """A stored array that records the bytes of every read of it."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.shape, self.dtype, self.chunks = array.shape, array.dtype, array.chunks
        self.reads: list[int] = []

    def __getitem__(self, key: Any) -> np.ndarray:
        out = np.asarray(self.array[key])
        self.reads.append(out.nbytes)
        return out


def test_relative_ess_reads_a_stored_per_row_site_in_pieces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a trace's per-row latent sites: 2 chains x 100 draws x 2,000 rows (1.6 MB),
    # and 3 x 500 rows, the rows on the site's second axis (1.2 MB)
    rng = np.random.default_rng(5)

    def draws(*shape: int) -> np.ndarray:
        walk = np.cumsum(rng.normal(size=(2, 100, *shape)), axis=1)  # autocorrelated
        return (0.2 * walk + rng.normal(size=walk.shape)).astype(np.float32)

    z, w = draws(2000), draws(3, 500)
    stored = {}
    for name, values, chunks in (("z", z, (1, 50, 100)), ("w", w, (1, 50, 3, 50))):
        array = zarr.create_array(store={}, shape=values.shape, chunks=chunks, dtype="f4")
        array[:] = values
        stored[name] = _Reads(array)
    alpha = rng.normal(size=(2, 100)).astype(np.float32)
    posterior = Posterior(
        {**{k: ChainMajorDraws(v) for k, v in stored.items()}, "alpha": alpha.reshape(200)},
        num_chains=2,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        whole = az.ess(
            xr.Dataset(
                {
                    "z": (("chain", "draw", "z_dim_0"), z),
                    "w": (("chain", "draw", "w_dim_0", "w_dim_1"), w),
                    "alpha": (("chain", "draw"), alpha),
                }
            ),
            method="mean",
        )
    # what arviz.loo computes: the mean over every element, over the draws
    expected = np.hstack([np.asarray(whole[v]).ravel() for v in whole.data_vars]).mean() / 200
    monkeypatch.setattr(loo_module, "ESS_PIECE_BYTES", 128 << 10)
    got = loo_module.relative_ess(posterior)
    assert got == pytest.approx(expected, rel=1e-12)
    assert 0.0 < got < 0.9  # the autocorrelation shows
    # each site is read once, in pieces of at most 128 KiB, never whole
    for name, values in (("z", z), ("w", w)):
        reads = stored[name].reads
        assert sum(reads) == values.nbytes and max(reads) <= 128 << 10, (name, reads)
    # a posterior without latent elements: nothing to measure, draws independent
    none = zarr.create_array(store={}, shape=(2, 100, 0), chunks=(1, 50, 1), dtype="f4")
    assert loo_module.relative_ess(Posterior({"e": ChainMajorDraws(none)}, num_chains=2)) == 1.0


@pytest.mark.parametrize("draws", [N_DRAWS, 1000])
def test_psis_of_a_log_likelihood_matrix_agrees_with_arviz(draws: int) -> None:
    # heavy-tailed data under a normal model: Pareto k from about 0 to several
    # (ArviZ itself gives NaN for the most extreme rows of t(2) or t(3) data)
    rng = np.random.default_rng(draws)
    rows = 3000
    mu = rng.normal(0.0, 0.15, (draws, 1))
    sd = np.exp(rng.normal(0.0, 0.08, (draws, 1)))
    y = rng.standard_t(4, rows)
    log_lik = (-0.5 * ((y - mu) / sd) ** 2 - np.log(sd) - 0.9189385).astype(np.float32)
    log_lik[:, :3] = np.float32(-1.25)  # every draw tied: no tail to fit
    loo_i, k, lppd = (np.asarray(v) for v in jax.jit(psis_loo)(jnp.asarray(log_lik.T)))
    idata = az.InferenceData(
        log_likelihood=xr.Dataset({"y": (("chain", "draw", "y_dim_0"), log_lik[None])}),
        posterior=xr.Dataset({"mu": (("chain", "draw"), mu.T)}),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = az.loo(idata, pointwise=True)
    assert loo_i.sum() == pytest.approx(ref.elpd_loo, rel=1e-4)
    assert _k_agreement(k, ref.pareto_k.values) >= 0.999
    assert np.nanmax(k[np.isfinite(k)]) > 1.0 and np.median(k) < 0.5
    np.testing.assert_array_equal(np.isinf(k), np.isinf(ref.pareto_k.values))
    assert np.isinf(k[:3]).all()
    np.testing.assert_allclose(loo_i[:3], -1.25, rtol=1e-6)
    assert (lppd.sum() - loo_i.sum()) == pytest.approx(ref.p_loo, rel=1e-3)
    assert tail_length(draws) == int(np.ceil(min(0.2 * draws, 3 * np.sqrt(draws))))


def test_loo_needs_the_observed_output(linear_fit: Any) -> None:
    model, X, _ = linear_fit
    with pytest.raises(ValueError, match="`loo` needs the observed output"):
        model.loo(X, progress=False)
    with pytest.raises(ValueError, match="`reff` must be a positive number"):
        model.loo(X, X[:, 0], reff=0.0, progress=False)
