"""Per-row latent sites in-sample: each row block carries its rows' slice of the posterior.

Posterior draws are fixed (``set_posterior_sample``), so the expected values
are known: ``log_likelihood`` and the scenario contrasts are checked against
closed forms, and every call is checked against ``predict_on_batch`` (all rows
in one block) at several block sizes.
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
import xarray as xr
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.optim import Adam

from dopax import ImpactModel

N_ROWS = 40
N_DRAWS = 20
K = 3
KEY = jax.random.key(11)


def latent_kernel(X: Any, y: Any = None) -> None:
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("obs", X.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        mu = numpyro.deterministic("mu", X @ beta + z)
        numpyro.sample("y", dist.Normal(mu, 0.5), obs=y)


def wide_latent_kernel(X: Any, y: Any = None) -> None:
    """A per-row latent whose row axis is its second: ``u`` is ``(K, rows)``."""
    with numpyro.plate("obs", X.shape[0], dim=-1):
        with numpyro.plate("k", K, dim=-2):
            u = numpyro.sample("u", dist.Normal(0.0, 1.0))
        mu = numpyro.deterministic("mu", X[:, 0] + u.sum(0))
        numpyro.sample("y", dist.Poisson(jnp.exp(0.3 * mu)), obs=y)


def coupling_latent_kernel(X: Any, y: Any = None) -> None:
    """Rows couple through the per-row latent (centred over the rows)."""
    with numpyro.plate("obs", X.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(X[:, 0] + z - z.mean(), 0.5), obs=y)


def make_model(kernel: Any) -> ImpactModel:
    svi = SVI(kernel, AutoNormal(kernel), Adam(0.01), Trace_ELBO())
    return ImpactModel(kernel, jax.random.key(0), svi)


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {
        "X": rng.normal(size=(N_ROWS, 2)).astype(np.float32),
        "y": rng.normal(size=(N_ROWS,)).astype(np.float32),
        "beta": rng.normal(size=(N_DRAWS, 2)).astype(np.float32),
        "z": rng.normal(size=(N_DRAWS, N_ROWS)).astype(np.float32),
        "u": rng.normal(size=(N_DRAWS, K, N_ROWS)).astype(np.float32) * 0.3,
    }


def site_values(tree: xr.DataTree, group: str) -> dict[str, np.ndarray]:
    node = tree[group]
    assert isinstance(node, xr.DataTree)
    return {str(k): np.asarray(v.values) for k, v in node.data_vars.items()}


def assert_close(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert set(a) == set(b)
    for name in a:
        assert a[name].shape == b[name].shape, name
        if np.issubdtype(a[name].dtype, np.integer):
            # a count may move where ``X @ beta`` rounds differently at another block shape
            assert np.mean(a[name] != b[name]) < 1e-3, name
        else:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_per_row_latent_streams_in_row_blocks(data: dict[str, np.ndarray], tmp_path: Path) -> None:
    X = data["X"]
    model = make_model(latent_kernel).set_posterior_sample({"beta": data["beta"], "z": data["z"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "rows are processed together"
        ref = site_values(model.predict_on_batch(X, rng_key=KEY), "posterior_predictive")  # type: ignore[arg-type]
        for batch_size, store in ((7, "persistent"), (13, "memory"), (40, "persistent")):
            tree = model.predict(
                X,
                rng_key=KEY,
                batch_size=batch_size,
                store=store,
                output_dir=tmp_path / f"b{batch_size}" if store == "persistent" else None,
                progress=False,
            )
            assert tree.attrs["path"] == "rows"
            assert tree.attrs["batch_size"] == batch_size
            assert_close(site_values(tree, "posterior_predictive"), ref)
            if store == "persistent":
                assert tree["posterior_predictive"]["y"].encoding["chunks"][-1] == batch_size
        drawn = model.predict(
            X, rng_key=KEY, batch_size=7, shard_axis="draw", store="memory", progress=False
        )
        assert_close(site_values(drawn, "posterior_predictive"), ref)
    # the posterior's z is the one used: mu = X beta + z exactly
    np.testing.assert_allclose(ref["mu"][0], data["beta"] @ X.T + data["z"], rtol=1e-5, atol=1e-5)


def test_log_likelihood_and_scenarios_use_each_rows_latent(data: dict[str, np.ndarray]) -> None:
    X, y = data["X"], data["y"]
    model = make_model(latent_kernel).set_posterior_sample({"beta": data["beta"], "z": data["z"]})
    mu = data["beta"] @ X.T + data["z"]
    expected = -0.5 * ((y - mu) / 0.5) ** 2 - np.log(0.5) - 0.5 * np.log(2 * np.pi)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for batch_size in (7, 40):
            tree = model.log_likelihood(X, y, batch_size=batch_size, store="memory", progress=False)
            ll = site_values(tree, "log_likelihood")["y"][0]
            np.testing.assert_allclose(ll, expected, rtol=1e-4, atol=1e-4)
        effects = [
            model.compare_scenarios(
                X,
                {"base": {}, "shift": {"X": X + 1.0}},
                baseline="base",
                site="mu",
                rng_key=KEY,
                batch_size=batch_size,
                progress=False,
            )
            for batch_size in (7, 40)
        ]
    # shifting every input by one moves mu by beta's sum, whatever z
    for effect in effects:
        ate = effect.tree["draws"]["ate"].values.reshape(-1)
        np.testing.assert_allclose(ate, data["beta"].sum(1), rtol=1e-5, atol=1e-5)


def test_a_per_row_latent_with_its_row_axis_second(data: dict[str, np.ndarray]) -> None:
    X = data["X"]
    model = make_model(wide_latent_kernel).set_posterior_sample({"u": data["u"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ref = site_values(model.predict_on_batch(X, rng_key=KEY), "posterior_predictive")  # type: ignore[arg-type]
        for batch_size in (6, 17):
            tree = model.predict(
                X, rng_key=KEY, batch_size=batch_size, store="memory", progress=False
            )
            assert tree.attrs["path"] == "rows"
            assert_close(site_values(tree, "posterior_predictive"), ref)
    np.testing.assert_allclose(ref["mu"][0], X[:, 0] + data["u"].sum(1), rtol=1e-5, atol=1e-5)


def test_rows_coupled_through_a_per_row_latent_run_together(
    data: dict[str, np.ndarray],
) -> None:
    X = data["X"]
    model = make_model(coupling_latent_kernel).set_posterior_sample({"z": data["z"]})
    with pytest.warns(UserWarning, match="rows are processed together"):
        tree = model.predict(X, rng_key=KEY, batch_size=7, store="memory", progress=False)
    assert tree.attrs["path"] == "full"
    with pytest.warns(UserWarning, match="couples rows"):
        on_batch = model.predict_on_batch(X, rng_key=KEY)
    ref = site_values(on_batch, "posterior_predictive")  # type: ignore[arg-type]
    assert_close(site_values(tree, "posterior_predictive"), ref)


def test_in_sample_needs_the_training_rows(data: dict[str, np.ndarray]) -> None:
    model = make_model(latent_kernel).set_posterior_sample({"beta": data["beta"], "z": data["z"]})
    with pytest.raises(ValueError, match="in_sample=False"):
        model.predict(data["X"][:10], store="memory", progress=False)
    fresh = model.predict(data["X"][:10], in_sample=False, store="memory", progress=False)
    assert fresh["predictions"]["y"].shape == (1, N_DRAWS, 10)
