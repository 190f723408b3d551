"""Kernels that drop the row axis of a one-row batch (``.squeeze()``) run like any other.

Such a kernel is legal NumPyro: on one row its per-row deterministic site is
a scalar. dopax never probes it on one row, and never runs a block or a
device's share of one with a single row when rows are split (it pads).
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
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.optim import Adam

from dopax import ImpactModel
from dopax.execution.runner import padded_rows

N_DRAWS = 6


def squeeze_kernel(X: Any, y: Any = None) -> None:
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1], 1]).to_event(2))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    with numpyro.plate("obs", X.shape[0]):
        p = numpyro.deterministic("p", jax.nn.sigmoid(X @ w + b).squeeze())
        numpyro.sample("y", dist.Bernoulli(p), obs=y)


def make_model() -> ImpactModel:
    svi = SVI(squeeze_kernel, AutoNormal(squeeze_kernel), Adam(0.01), Trace_ELBO())
    model = ImpactModel(squeeze_kernel, jax.random.key(0), svi)
    rng = np.random.default_rng(3)
    return model.set_posterior_sample(
        {
            "w": rng.normal(size=(N_DRAWS, 3, 1)).astype(np.float32),
            "b": rng.normal(size=(N_DRAWS,)).astype(np.float32),
        }
    )


def values(tree: Any, group: str) -> dict[str, np.ndarray]:
    return {str(k): np.asarray(v.values) for k, v in tree[group].data_vars.items()}


def test_padded_rows() -> None:
    assert padded_rows(1, 1, True, 1) == 2
    assert padded_rows(1, 4, True, 1) == 4  # a short last block reuses the block's program
    assert padded_rows(3, 3, True, 2) == 4  # two rows per device at least
    assert padded_rows(1, 1000, True, 1) == 128  # an eighth of the block, in multiples of 8
    assert padded_rows(130, 1000, True, 1) == 256
    assert padded_rows(871, 1000, True, 1) == 896
    assert padded_rows(872, 1000, True, 1) == 1000  # within an eighth: the full block
    assert padded_rows(90, 100, True, 1) == 100
    assert padded_rows(1, 1, False, 1) == 1  # rows that may not be split are never padded


def test_squeezing_kernel_runs_on_any_batch(tmp_path: Path) -> None:
    model = make_model()
    X = np.random.default_rng(1).normal(size=(9, 3)).astype(np.float32)
    key = jax.random.key(5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "rows together" fallback
        ref = model.predict_on_batch(X, rng_key=key, return_datatree=False)
        assert ref["p"].shape == (N_DRAWS, 9) and ref["y"].shape == (N_DRAWS, 9)
        for batch_size in (1, 2, 4, None):
            tree = model.predict(
                X, rng_key=key, batch_size=batch_size, output_dir=tmp_path, progress=False
            )
            got = values(tree, "posterior_predictive")
            np.testing.assert_allclose(got["p"][0], ref["p"], rtol=1e-6)
            np.testing.assert_array_equal(got["y"][0], ref["y"])
        # one row in all: the call is padded to two and trimmed back
        one = model.predict_on_batch(X[:1], rng_key=key, return_datatree=False)
        np.testing.assert_allclose(one["p"], ref["p"][:, :1], rtol=1e-6)
        np.testing.assert_array_equal(one["y"], ref["y"][:, :1])
        # prior draws: the global latents come from the anchor rows
        prior = model.sample_prior_predictive(
            X, num_samples=4, rng_key=key, batch_size=1, output_dir=tmp_path, progress=False
        )
        assert values(prior, "prior_predictive")["p"].shape == (1, 4, 9)
        y = (ref["y"][0] > 0).astype(np.int32)
        ll = model.log_likelihood(X, y, batch_size=1, output_dir=tmp_path, progress=False)
        assert values(ll, "log_likelihood")["y"].shape == (1, N_DRAWS, 9)
        effect = model.compare_scenarios(
            X,
            {"base": {}, "shift": {"X": X + 1.0}},
            baseline="base",
            site="p",  # the expectation: per-row intervals of a 0/1 outcome are whole numbers
            rng_key=key,
            batch_size=1,
            progress=False,
        )
    by_row = np.asarray(effect.tree["rows"]["effect_mean"].values).reshape(-1)
    assert by_row.shape == (9,) and np.all(np.isfinite(by_row))


def test_squeezing_kernel_with_a_per_row_latent_keeps_its_row_axis(tmp_path: Path) -> None:
    """A kernel with a per-row latent in the posterior (each block carries its rows'
    values), called on one row."""

    def coupled(X: Any, y: Any = None) -> None:
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1], 1]).to_event(2))
        with numpyro.plate("obs", X.shape[0]):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0))  # a per-row latent in the posterior
            p = numpyro.deterministic("p", jax.nn.sigmoid(X @ w + z[:, None]).squeeze())
            numpyro.sample("y", dist.Bernoulli(p), obs=y)

    svi = SVI(coupled, AutoNormal(coupled), Adam(0.01), Trace_ELBO())
    model = ImpactModel(coupled, jax.random.key(0), svi)
    rng = np.random.default_rng(4)
    rng_w = rng.normal(size=(N_DRAWS, 3, 1)).astype(np.float32)
    rng_z = rng.normal(size=(N_DRAWS, 1)).astype(np.float32)
    model.set_posterior_sample({"w": rng_w, "z": rng_z})
    X = jnp.ones((1, 3), jnp.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tree = model.predict(X, output_dir=tmp_path, progress=False)
    p = values(tree, "posterior_predictive")["p"]
    assert p.shape == (1, N_DRAWS, 1)
    expected = 1.0 / (1.0 + np.exp(-(np.asarray(X) @ rng_w[:, :, 0].T + rng_z.T)))
    np.testing.assert_allclose(p[0], expected.T, rtol=1e-5, atol=1e-6)
