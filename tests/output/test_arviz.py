"""ArviZ reads dopax results as they are returned: statistics, LOO and PPC plots."""

from __future__ import annotations

import warnings
from typing import Any

import arviz as az
import jax
import matplotlib
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import xarray as xr
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.optim import Adam

from dopax import ImpactModel, open_result

matplotlib.use("Agg")

N, D = 30, 40


def kernel(X: Any, y: Any = None) -> None:
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(X @ beta, sigma), obs=y)


@pytest.fixture(scope="module")
def fitted() -> tuple[ImpactModel, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, 2)).astype(np.float32)
    y = (X @ np.array([1.0, -1.0], np.float32) + 0.3 * rng.normal(size=N)).astype(np.float32)
    model = ImpactModel(
        kernel, jax.random.key(0), SVI(kernel, AutoNormal(kernel), Adam(0.05), Trace_ELBO())
    )
    model.fit_on_batch(X, y, num_steps=50, num_samples=D, progress=False)
    return model, X, y


def _idata(tree: xr.DataTree) -> Any:
    """What ArviZ 0.2x users do with a DataTree (ArviZ 1.0 takes the tree itself)."""
    return tree if int(az.__version__.split(".")[0]) >= 1 else az.from_datatree(tree)


def _statistics(tree: xr.DataTree) -> None:
    idata = _idata(tree)
    with warnings.catch_warnings():
        # ArviZ's own notes about few draws and high Pareto k are not under test
        warnings.simplefilter("ignore", UserWarning)
        table = az.summary(idata)
        rhat = az.rhat(idata)
        loo = az.loo(idata)
        waic = az.waic(idata)
    assert set(table.index) >= {"beta[0]", "beta[1]", "sigma"}
    assert np.isfinite(table["mean"]).all()
    assert rhat["beta"].shape == (2,)
    assert np.isfinite(float(loo.elpd_loo)) and np.isfinite(float(waic.elpd_waic))


def test_arviz_statistics_run_on_persisted_and_reopened_results(fitted: Any, tmp_path: Any) -> None:
    model, X, y = fitted
    tree = model.log_likelihood(X, y, batch_size=8, output_dir=tmp_path, progress=False)
    _statistics(tree)
    _statistics(open_result(tree.attrs["artifact_path"]))
    _statistics(model.log_likelihood(X, y, store="memory", progress=False))


def test_arviz_groups_stay_lazy_and_predictive_draws_stay_chunked(fitted: Any) -> None:
    model, X, _ = fitted
    tree = model.predict(X, batch_size=8, progress=False)
    # the draws users reduce are Dask arrays chunked as stored ...
    assert tree["posterior_predictive"]["y"].chunks == ((1,), (D,), (8, 8, 8, 6))
    # ... and what ArviZ reads whole is read on demand, not held in memory
    posterior = tree["posterior"]["beta"].variable
    assert posterior.chunks is None
    assert not isinstance(posterior._data, np.ndarray)
    np.testing.assert_allclose(posterior.values, model.posterior["beta"].reshape(1, D, 2))


def test_results_fitted_on_data_carry_observed_data(fitted: Any) -> None:
    model, X, y = fitted
    tree = model.predict(X, batch_size=8, progress=False)
    observed = tree["observed_data"]["y"]
    assert observed.dims == ("y_dim_0",)
    np.testing.assert_array_equal(observed.values, y)
    reopened = open_result(tree.attrs["artifact_path"])
    np.testing.assert_array_equal(reopened["observed_data"]["y"].values, y)
    for key in ("creation_library", "inference_library", "inference_library_version"):
        assert key in reopened.attrs
    # stored in chunks along rows like the draws
    import zarr

    stored = zarr.open_array(tree.attrs["artifact_path"], path="observed_data/y", mode="r")
    assert stored.chunks == (8,)
    # in memory too, and a log-likelihood carries the y it was computed on
    on_batch = model.predict_on_batch(X)
    np.testing.assert_array_equal(on_batch["observed_data"]["y"].values, y)
    y_new = y + 1.0
    ll = model.log_likelihood(X, y_new, progress=False)
    np.testing.assert_array_equal(ll["observed_data"]["y"].values, y_new)
    # new rows and the prior are not what the model was fitted on
    assert "observed_data" not in model.predict(X, in_sample=False, progress=False).children
    assert "observed_data" not in model.predict(X[:10], progress=False).children
    prior = model.sample_prior_predictive(X, num_samples=5, progress=False)
    assert "observed_data" not in prior.children
    # a posterior predictive check plots as it is
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ArviZ's own matplotlib calls
        az.plot_ppc(_idata(tree), num_pp_samples=5)
    import matplotlib.pyplot as plt

    plt.close("all")


def test_posterior_set_by_hand_has_no_observed_data(fitted: Any) -> None:
    model, X, _ = fitted
    other = ImpactModel(
        kernel, jax.random.key(1), SVI(kernel, AutoNormal(kernel), Adam(0.05), Trace_ELBO())
    )
    other.set_posterior_sample(model.posterior)
    assert "observed_data" not in other.predict_on_batch(X).children
