"""Fixtures of the saved-model, MLflow and command-line tests.

This folder has no ``__init__.py`` on purpose: as a package it would be named
``io`` and clash with the standard library's module. Its modules (this one,
``io_kernels``) import by their plain names.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import jax
import pytest
from io_kernels import data, linear
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.optim import Adam

from dopax import ImpactModel

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def subprocess_env() -> dict[str, str]:
    """The environment of a child process: this checkout's code, the kernels module, the venv."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(HERE)])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env


def pickle_files(folder: Path) -> list[Path]:
    """Files that are pickles: by name, or by a pickle protocol header (0x80, 2..5)."""
    found = []
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        head = path.read_bytes()[:2]
        by_header = len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5
        if path.suffix in (".pkl", ".pickle") or by_header:
            found.append(path)
    return found


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
