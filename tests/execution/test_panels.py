"""Panels: rows are units with a time axis inside, split by unit wherever the unit axis falls.

An AR(1) panel scans over weeks, so its outcome is ``(T, units)``: results
keep that order, chunked along units by block, and draws equal those of
``predict_on_batch``. Scenario contrasts are checked against their closed
form (common random numbers: the AR(1) residual cancels exactly), and
interventions broadcast over time or give one value per row on a site
whose row axis is not its first.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import xarray as xr
from numpyro.contrib.control_flow import scan
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.optim import Adam

from dopax import ImpactModel

N_UNITS = 30
WEEKS = 12
START = 8  # the treatment starts in week 8
N_DRAWS = 16
K = 3
KEY = jax.random.key(5)


def panel(X: Any, treat: Any, y: Any = None) -> None:
    """AR(1) residuals around a unit level; ``X[:, 1]`` marks treated units."""
    n = X.shape[0]
    a = numpyro.sample("a", dist.Normal(0.0, 1.0))
    phi = numpyro.sample("phi", dist.Uniform(-0.9, 0.9))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    effect = numpyro.sample("effect", dist.Normal(0.0, 1.0))
    with numpyro.plate("unit", n):
        u = numpyro.sample("u", dist.Normal(0.0, 0.5))  # a per-unit latent
    mu = a + u[None, :] + X[None, :, 0] + effect * treat[:, None] * X[None, :, 1]  # (T, n)

    def week(prev: Any, inputs: Any) -> Any:
        prev_mu, prev_y = prev
        mu_t, y_t = inputs
        with numpyro.plate("unit", n):
            y_new = numpyro.sample(
                "y", dist.Normal(mu_t + phi * (prev_y - prev_mu), sigma), obs=y_t
            )
        return (mu_t, y_new), y_new

    scan(week, (mu[0], mu[0]), (mu, None if y is None else y.T))


def wide(X: Any, y: Any = None) -> None:
    """A per-row latent ``u`` of shape ``(K, rows)``: its row axis is its second."""
    with numpyro.plate("obs", X.shape[0], dim=-1):
        with numpyro.plate("k", K, dim=-2):
            u = numpyro.sample("u", dist.Normal(0.0, 1.0))
        mu = numpyro.deterministic("mu", X[:, 0] + u.sum(0))
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def make_model(kernel: Any) -> ImpactModel:
    return ImpactModel(
        kernel, jax.random.key(0), SVI(kernel, AutoNormal(kernel), Adam(0.01), Trace_ELBO())
    )


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    X = np.stack([rng.normal(size=N_UNITS), rng.random(N_UNITS) < 0.5], 1).astype(np.float32)
    post = {
        "a": rng.normal(size=N_DRAWS),
        "phi": rng.uniform(-0.5, 0.5, N_DRAWS),
        "sigma": rng.uniform(0.5, 1.5, N_DRAWS),
        "effect": rng.normal(1.0, 0.2, N_DRAWS),
        "u": rng.normal(size=(N_DRAWS, N_UNITS)),
    }
    return {
        "X": X,
        "treat": (np.arange(WEEKS) >= START).astype(np.float32),
        "post": {k: np.asarray(v, np.float32) for k, v in post.items()},
    }


@pytest.fixture(scope="module")
def model(data: dict[str, Any]) -> ImpactModel:
    return make_model(panel).set_posterior_sample(data["post"])


def ys(tree: xr.DataTree, group: str = "posterior_predictive") -> np.ndarray:
    return np.asarray(tree[group]["y"].values)


def test_a_scanned_panel_is_split_by_unit(
    model: ImpactModel, data: dict[str, Any], tmp_path: Path
) -> None:
    X, treat = data["X"], data["treat"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "rows are processed together"
        ref = ys(model.predict_on_batch(X, treat=treat, rng_key=KEY))  # type: ignore[arg-type]
        assert ref.shape == (1, N_DRAWS, WEEKS, N_UNITS)  # the site's own order: time first
        for batch_size in (7, 13):
            tree = model.predict(
                X,
                treat=treat,
                rng_key=KEY,
                batch_size=batch_size,
                output_dir=tmp_path / str(batch_size),
                progress=False,
            )
            assert tree.attrs["path"] == "rows"
            assert tree["posterior_predictive"]["y"].dims[2:] == ("y_dim_0", "y_dim_1")
            chunks = tree["posterior_predictive"]["y"].encoding["chunks"]
            assert chunks[2:] == (WEEKS, batch_size)  # chunked along the units
            np.testing.assert_allclose(ys(tree), ref, rtol=1e-5, atol=1e-5)
    # every week and every unit draws its own noise
    resid = np.diff(ref[0], axis=1)
    assert np.abs(np.corrcoef(resid[:, :, 0].ravel(), resid[:, :, 1].ravel())[0, 1]) < 0.3
    assert np.all(resid.std(axis=(0, 2)) > 0.1)


def test_a_panel_post_period_effect_is_exact_under_common_random_numbers(
    model: ImpactModel, data: dict[str, Any]
) -> None:
    X, treat = data["X"], data["treat"]
    # a scalar override broadcasts over the time axis of ``treat``
    scenarios = {"treated": {}, "untreated": {"treat": 0.0}}
    effects = [
        model.compare_scenarios(
            X,
            scenarios,
            baseline="untreated",
            treat=treat,
            rng_key=KEY,
            batch_size=b,
            progress=False,
        )
        for b in (7, N_UNITS)
    ]
    # y(treated) - y(untreated) = effect * treat_t * X1_i exactly: the AR(1)
    # residual is the same under both scenarios
    want = data["post"]["effect"] * X[:, 1].mean() * treat.mean()
    for effect in effects:
        ate = effect.tree["draws"]["ate"].values.reshape(-1)
        np.testing.assert_allclose(ate, want, rtol=1e-4, atol=1e-5)
    rows = effects[0].tree["rows"]["effect_mean"].values.reshape(-1)
    np.testing.assert_allclose(
        rows, data["post"]["effect"].mean() * X[:, 1] * treat.mean(), rtol=1e-4, atol=1e-5
    )


def test_a_fitted_panel_keeps_its_data_in_the_sites_order(data: dict[str, Any]) -> None:
    X, treat = data["X"], data["treat"]
    y = np.random.default_rng(3).normal(size=(N_UNITS, WEEKS)).astype(np.float32)
    fitted = make_model(panel)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a short fit
        fitted.fit_on_batch(X, y, treat=treat, num_steps=30, num_samples=8, progress=False)
    tree = fitted.predict(X, treat=treat, batch_size=11, store="memory", progress=False)
    np.testing.assert_array_equal(tree["observed_data"]["y"].values, y.T)  # (T, units)
    assert tree["posterior_predictive"]["y"].shape == (1, 8, WEEKS, N_UNITS)
    ll = [
        fitted.log_likelihood(X, y, treat=treat, batch_size=b, store="memory", progress=False)
        for b in (11, N_UNITS)
    ]
    a, b = (np.asarray(t["log_likelihood"]["y"].values) for t in ll)
    assert a.shape == (1, 8, WEEKS, N_UNITS)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_interventions_vary_over_time_or_by_row_on_a_second_row_axis() -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(20, 1)).astype(np.float32)
    u = rng.normal(size=(N_DRAWS, K, 20)).astype(np.float32)
    model = make_model(wide).set_posterior_sample({"u": u})
    by_k = np.asarray([[1.0], [2.0], [3.0]], np.float32)  # varies along K, shared by rows
    per_row = rng.normal(size=(K, 20)).astype(np.float32)  # one value per row, rows second
    for value in (by_k, per_row, 0.5):
        got = [
            model.predict(
                X,
                intervention={"u": value},
                rng_key=KEY,
                batch_size=b,
                store="memory",
                progress=False,
            )["posterior_predictive"]["mu"].values[0]
            for b in (6, 20)
        ]
        want = X[:, 0] + np.broadcast_to(value, (K, 20)).sum(0)
        for mu in got:
            np.testing.assert_allclose(mu, np.broadcast_to(want, mu.shape), rtol=1e-5)
    with pytest.raises(Exception, match="entries along axis 1"):
        model.predict(X, intervention={"u": per_row[:, :7]}, store="memory", progress=False)


def test_a_panel_summarises_by_unit_in_the_sites_order(
    model: ImpactModel, data: dict[str, Any]
) -> None:
    X, treat = data["X"], data["treat"]
    tree = model.summarize(
        X, treat=treat, rng_key=KEY, batch_size=7, store="memory", progress=False
    )
    ref = ys(model.predict_on_batch(X, treat=treat, rng_key=KEY))[0]  # type: ignore[arg-type]
    mean = np.asarray(tree["summary"]["y_mean"].values)
    assert mean.shape == (WEEKS, N_UNITS)
    np.testing.assert_allclose(mean, ref.mean(0), rtol=1e-4, atol=1e-4)
