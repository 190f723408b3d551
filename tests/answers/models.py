"""Kernels, data and a quick fit shared by the answer tests."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.optim import Adam

from dopax import ImpactModel

N_ROWS = 400
N_DRAWS = 300
BETA = np.array([1.0, -0.5, 0.25], np.float32)


def linear(X: Any, y: Any = None) -> None:
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 5.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("obs", X.shape[0]):
        mu = numpyro.deterministic("mu", alpha + X @ beta)
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def counts(X: Any, y: Any = None) -> None:
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 2.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("obs", X.shape[0]):
        rate = numpyro.deterministic("rate", jax.numpy.exp(alpha + X @ beta))
        numpyro.sample("y", dist.Poisson(rate), obs=y)


def simulate(n: int, seed: int = 0, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the linear model with intercept 0.5 and noise sd ``noise``."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, BETA.size)).astype(np.float32)
    y = (0.5 + X @ BETA + noise * rng.normal(size=n)).astype(np.float32)
    return X, y


def fit(kernel: Any, X: np.ndarray, y: np.ndarray, steps: int = 600) -> ImpactModel:
    svi = SVI(kernel, AutoNormal(kernel), Adam(0.05), Trace_ELBO())
    model = ImpactModel(kernel, jax.random.key(0), svi)
    return model.fit_on_batch(X, y, num_steps=steps, num_samples=N_DRAWS, progress=False)
