"""Settings for every test process, and fitted models several test folders share.

One persistent JAX compilation cache: many tests compile the same small
programs (the same kernels at the same shapes, in this process, in the other
test workers and in the subprocesses the tests start), and JAX's persistent
cache lets each compile once per run. Every process started from here
inherits the folder through the environment. A cached program is the same
executable, so results do not change; tests that count compilations turn the
cache off for themselves.

The fitted models serve the saved-model, table, MLflow and command-line
tests. They fit once per session, and only when a test asks for them. Their
kernel lives in ``saved_kernels`` (importable by reference from this folder).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import pytest
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.optim import Adam

from dopax import ImpactModel
from saved_kernels import data, linear

_CACHE = Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax-compilation"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update(
    "jax_persistent_cache_min_compile_time_secs",
    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
)
jax.config.update(
    "jax_persistent_cache_min_entry_size_bytes",
    int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]),
)


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
