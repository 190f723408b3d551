"""Kernels for the saved-model, MLflow and command-line tests (importable by reference)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist


def linear(X, t, y=None):
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 5.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    tau = numpyro.sample("tau", dist.Normal(0.0, 1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("obs", X.shape[0]):
        mu = numpyro.deterministic("mu", alpha + X @ beta + tau * t)
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def row_effects(X, y=None):
    """Poisson counts with a latent ``z`` per row (a guide parameter per row)."""
    a = numpyro.sample("a", dist.Normal(0.0, 1.0))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    with numpyro.plate("obs", X.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Poisson(jnp.exp(a + X @ b + s * z)), obs=y)


def data(n=64, k=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, k)).astype(np.float32)
    t = rng.integers(0, 2, size=n).astype(np.float32)
    y = (0.5 + X @ np.arange(1, k + 1, dtype=np.float32) * 0.3 + 1.5 * t).astype(np.float32)
    y = (y + rng.normal(scale=0.5, size=n)).astype(np.float32)
    return X, t, y
