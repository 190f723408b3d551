"""Fitted models shared by the saved-model, table, MLflow and command-line tests.

They fit once per session, and only when a test asks for them. Their kernel
lives in ``saved_kernels`` (importable by reference from this folder).
"""

from __future__ import annotations

import jax
import pytest
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.optim import Adam

from dopax import ImpactModel
from saved_kernels import data, linear


@pytest.fixture(scope="session")
def xy():
    return data()


@pytest.fixture(scope="session")
def svi_model(xy):
    X, t, y = xy
    svi = SVI(linear, AutoNormal(linear), Adam(0.02), Trace_ELBO())
    model = ImpactModel(linear, jax.random.key(0), svi)
    model.fit_on_batch(X, y, t=t, num_steps=300, num_samples=100, progress=False)
    return model


@pytest.fixture(scope="session")
def mcmc_model(xy):
    X, t, y = xy
    mcmc = MCMC(
        NUTS(linear),
        num_warmup=60,
        num_samples=40,
        num_chains=2,
        chain_method="sequential",
        progress_bar=False,
    )
    model = ImpactModel(linear, jax.random.key(1), mcmc)
    model.fit_on_batch(X, y, t=t, progress=False)
    return model
