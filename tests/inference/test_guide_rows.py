"""Per-row latents of a guide that factorises over rows are drawn per block, not stored.

The fit keeps the draws of the global sites; each in-sample call draws the
per-row sites from the guide's per-row parameters, keyed by row, so draws do
not depend on the block size. The draws are checked against the guide's own
distribution (known per row), guides that couple rows fall back with a
warning naming the guide, and a saved model predicts the same draws.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import (
    AutoDelta,
    AutoGuideList,
    AutoMultivariateNormal,
    AutoNormal,
)
from numpyro.optim import Adam

import dopax
from dopax import ImpactModel

N_ROWS = 300
N_DRAWS = 400
KEY = jax.random.key(21)


def kernel(X: Any, y: Any = None, subsample_size: int | None = None) -> None:
    a = numpyro.sample("a", dist.Normal(0.0, 1.0))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    with numpyro.plate("obs", X.shape[0], subsample_size=subsample_size) as idx:
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        v = numpyro.sample("v", dist.LogNormal(0.0, 0.3))  # a positive per-row latent
        eta = numpyro.deterministic("eta", a + X[idx] @ b + s * z)
        numpyro.sample("y", dist.Poisson(v * jnp.exp(eta)), obs=None if y is None else y[idx])


def standardising_kernel(X: Any, y: Any = None) -> None:
    Xs = (X - X.mean(0)) / (X.std(0) + 1.0)  # couples rows
    b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("obs", X.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Poisson(jnp.exp(Xs @ b + 0.3 * z)), obs=y)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    X = rng.normal(scale=0.5, size=(N_ROWS, 2)).astype(np.float32)
    y = rng.poisson(np.exp(0.3 + X @ np.array([0.8, -0.5]) + 0.5 * rng.normal(size=N_ROWS)))
    return X, y.astype(np.int32)


def fitted(guide: Any, data: tuple[np.ndarray, np.ndarray], model_fn: Any = kernel) -> ImpactModel:
    X, y = data
    model = ImpactModel(model_fn, jax.random.key(0), SVI(model_fn, guide, Adam(0.03), Trace_ELBO()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a short fit
        model.fit_on_batch(X, y, num_steps=300, num_samples=N_DRAWS, progress=False)
    return model


@pytest.fixture(scope="module")
def normal(data: tuple[np.ndarray, np.ndarray]) -> ImpactModel:
    return fitted(AutoNormal(kernel), data)


def draws_of(model: ImpactModel, X: np.ndarray, **kwargs: Any) -> dict[str, np.ndarray]:
    tree = model.predict(X, rng_key=KEY, store="memory", progress=False, **kwargs)
    node = tree["posterior_predictive"]
    return {str(k): np.asarray(v.values).reshape(-1, *v.shape[2:]) for k, v in node.items()}


def test_the_fit_keeps_global_draws_and_the_guides_rows(normal: ImpactModel) -> None:
    assert sorted(normal.posterior or {}) == ["a", "b", "s"]  # no draws x rows of z or v
    assert (normal.posterior or {})["a"].shape == (N_DRAWS,)
    params = normal.vi_result.params
    assert params["z_auto_loc"].shape == (N_ROWS,)


def test_per_row_draws_follow_the_guide_and_not_the_block_size(
    normal: ImpactModel, data: tuple[np.ndarray, np.ndarray]
) -> None:
    X, _ = data
    sites = ["z", "v", "eta", "y"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "rows are processed together"
        ref_tree = normal.predict_on_batch(X, rng_key=KEY, return_sites=sites)
        ref = {k: np.asarray(v.values)[0] for k, v in ref_tree["posterior_predictive"].items()}
        for batch_size in (37, 128):
            got = draws_of(normal, X, batch_size=batch_size, return_sites=sites)
            for name in sites:
                if name == "y":
                    assert np.mean(got[name] != ref[name]) < 1e-3
                else:
                    np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-5)
    params = normal.vi_result.params
    loc, scale = np.asarray(params["z_auto_loc"]), np.asarray(params["z_auto_scale"])
    z = ref["z"]
    # each row's z ~ Normal(loc, scale): mean and sd over 400 draws
    assert np.all(np.abs(z.mean(0) - loc) < 4.5 * scale / np.sqrt(N_DRAWS))
    np.testing.assert_allclose(z.std(0).mean(), scale.mean(), rtol=0.1)
    # a positive site is mapped from unconstrained space: median exp(loc)
    v_loc = np.asarray(params["v_auto_loc"])
    np.testing.assert_allclose(np.median(np.log(ref["v"]), axis=0), v_loc, atol=0.2)
    # rows draw independently of each other
    assert abs(np.corrcoef(z[:, 0] - loc[0], z[:, 1] - loc[1])[0, 1]) < 0.2


def test_log_likelihood_and_scenarios_draw_the_same_rows(
    normal: ImpactModel, data: tuple[np.ndarray, np.ndarray]
) -> None:
    X, y = data
    lls = [
        normal.log_likelihood(X, y, batch_size=b, store="memory", progress=False)
        for b in (50, N_ROWS)
    ]
    np.testing.assert_allclose(
        lls[0]["log_likelihood"]["y"].values, lls[1]["log_likelihood"]["y"].values, rtol=1e-5
    )
    scenarios = {"base": {}, "up": {"X": X + 0.1}}
    effects = [
        normal.compare_scenarios(
            X, scenarios, baseline="base", site="eta", rng_key=KEY, batch_size=b, progress=False
        )
        for b in (64, N_ROWS)
    ]
    ate = [e.tree["draws"]["ate"].values.reshape(-1) for e in effects]
    np.testing.assert_allclose(ate[0], ate[1], rtol=1e-5, atol=1e-6)
    b_draws = (normal.posterior or {})["b"]
    np.testing.assert_allclose(ate[0], 0.1 * b_draws.sum(1), rtol=1e-4, atol=1e-5)


def test_delta_and_guide_lists_of_factorising_guides(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    X, _ = data
    guide = AutoGuideList(kernel)
    guide.append(AutoNormal(handlers.block(kernel, hide=["z", "v", "eta"])))
    guide.append(AutoDelta(handlers.block(kernel, hide=["a", "b", "s", "eta"])))
    model = fitted(guide, data)
    assert sorted(model.posterior or {}) == ["a", "b", "s"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = draws_of(model, X, batch_size=64, return_sites=["z", "eta"])
    z_point = np.asarray(model.vi_result.params["z_auto_loc"])
    np.testing.assert_allclose(got["z"], np.broadcast_to(z_point, got["z"].shape), rtol=1e-6)


def test_a_guide_that_couples_rows_falls_back_and_is_named(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    X, _ = data
    model = fitted(AutoMultivariateNormal(kernel), data)
    assert (model.posterior or {})["z"].shape == (N_DRAWS, N_ROWS)
    with pytest.warns(UserWarning, match="AutoMultivariateNormal"):
        tree = model.predict(X, rng_key=KEY, batch_size=64, store="memory", progress=False)
    assert tree.attrs["path"] == "full" and tree.attrs["batch_size"] == N_ROWS  # one block


def test_a_kernel_that_couples_rows_still_falls_back(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, _ = data
    model = fitted(AutoNormal(standardising_kernel), data, standardising_kernel)
    with pytest.warns(UserWarning, match="couples rows"):
        tree = model.predict(X, rng_key=KEY, batch_size=64, store="memory", progress=False)
    assert tree.attrs["path"] == "full"


def test_a_saved_model_draws_the_same_rows(
    normal: ImpactModel, data: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    X, _ = data
    loaded = dopax.load_model(dopax.save_model(normal, tmp_path / "m"), kernel=kernel)
    want = draws_of(normal, X, batch_size=100, return_sites=["z", "eta"])
    got = draws_of(loaded, X, batch_size=64, return_sites=["z", "eta"])
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6)


def test_per_row_latents_fit_in_subsampled_plates(data: tuple[np.ndarray, np.ndarray]) -> None:
    """NumPyro's mini-batch pattern: a subsampled plate at fit, every row at predict."""
    X, y = data
    model = ImpactModel(
        kernel, jax.random.key(0), SVI(kernel, AutoNormal(kernel), Adam(0.03), Trace_ELBO())
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit_on_batch(X, y, num_steps=300, num_samples=50, progress=False, subsample_size=64)
    assert model.vi_result.params["z_auto_loc"].shape == (N_ROWS,)  # one per row of the data
    assert sorted(model.posterior or {}) == ["a", "b", "s"]
    got = draws_of(model, X, batch_size=100, return_sites=["z"])
    assert got["z"].shape == (50, N_ROWS)
    loc = np.asarray(model.vi_result.params["z_auto_loc"])
    np.testing.assert_allclose(got["z"].mean(0), loc, atol=0.5)


def test_summarize_and_loo_use_the_same_rows(
    normal: ImpactModel, data: tuple[np.ndarray, np.ndarray]
) -> None:
    X, y = data
    tree = normal.summarize(X, rng_key=KEY, batch_size=64, store="memory", progress=False)
    draws = normal.predict_on_batch(X, rng_key=KEY, return_sites=["eta"])
    eta = np.asarray(draws["posterior_predictive"]["eta"].values)[0].astype(np.float64)
    np.testing.assert_allclose(tree["summary"]["eta_mean"], eta.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tree["summary"]["eta_sd"], eta.std(0, ddof=1), rtol=1e-4, atol=1e-5)
    with warnings.catch_warnings():  # a per-row latent makes many Pareto k large
        warnings.filterwarnings("ignore", message=".*estimated Pareto k")
        a = normal.loo(X, y, batch_size=64, store="memory", progress=False)
        b = normal.loo(X, y, batch_size=N_ROWS, store="memory", progress=False)
    assert np.isfinite(a.elpd_loo)
    np.testing.assert_allclose(a.elpd_loo, b.elpd_loo, rtol=1e-5)
