"""A small traced MCMC run shared by the trace tests and their subprocesses.

Subprocesses import this module as ``inference.trace_case`` (with ``tests/``
on ``sys.path``), as pytest does, so the kernel has the same module and
qualified name in every process: the trace's fingerprint records them.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS
from zarr.storage import LocalStore

import dopax

NUM_WARMUP = 100
NUM_SAMPLES = 100
NUM_CHAINS = 2
DPC = 10
KEY_SEED = 7

# Every per-draw group a run with `save_warmup` and `include_transformed` writes.
DRAW_GROUPS = (
    "posterior",
    "sample_stats",
    "unconstrained_posterior",
    "warmup_posterior",
    "warmup_sample_stats",
    "warmup_unconstrained_posterior",
)


def kernel(X: Any, y: Any = None) -> None:
    """Linear regression, beside Neal's funnel (``v``, ``z``) for some divergences."""
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 2.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    v = numpyro.sample("v", dist.Normal(0.0, 3.0))
    numpyro.sample("z", dist.Normal(0.0, jnp.exp(v / 2)))
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(alpha + X @ beta, sigma), obs=y)


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40, 2)).astype(np.float32)
    y = (0.5 + X @ np.array([1.0, -2.0]) + 0.3 * rng.normal(size=40)).astype(np.float32)
    return X, y


def make_mcmc(**overrides: Any) -> MCMC:
    settings: dict[str, Any] = {
        "num_warmup": NUM_WARMUP,
        "num_samples": NUM_SAMPLES,
        "num_chains": NUM_CHAINS,
        "chain_method": "sequential",
        "progress_bar": False,
    }
    settings.update(overrides)
    return MCMC(NUTS(kernel), **settings)


def new_trace(store: Any, dpc: int = DPC) -> dopax.ZarrTrace:
    return dopax.ZarrTrace(store, draws_per_chunk=dpc, save_warmup=True, include_transformed=True)


def fit(trace: dopax.ZarrTrace, mcmc: MCMC | None = None, **data_overrides: Any) -> Any:
    X, y = data()
    arrays = {"X": X, "y": y, **data_overrides}
    model = dopax.ImpactModel(kernel, jax.random.key(0), mcmc or make_mcmc())
    model.fit_on_batch(
        arrays["X"], arrays["y"], rng_key=jax.random.key(KEY_SEED), trace=trace, progress=False
    )
    return model


def draw_groups(trace: dopax.ZarrTrace) -> dict[str, dict[str, np.ndarray]]:
    """Every per-draw group of a trace, loaded."""
    tree = trace.to_datatree()
    return {
        group: {name: var.values for name, var in tree[group].data_vars.items()}
        for group in DRAW_GROUPS
        if group in tree.children
    }


def assert_same_groups(got: dict[str, Any], ref: dict[str, Any]) -> None:
    assert got.keys() == ref.keys()
    for group in ref:
        assert got[group].keys() == ref[group].keys(), group
        for name in ref[group]:
            np.testing.assert_array_equal(got[group][name], ref[group][name], err_msg=group)


def folder_digest(path: str | os.PathLike[str]) -> dict[str, str]:
    """Hash of every file under ``path``, by relative name."""
    out = {}
    root = Path(path)
    for file in sorted(root.rglob("*")):
        if file.is_file():
            out[str(file.relative_to(root))] = hashlib.sha256(file.read_bytes()).hexdigest()
    return out


class SlowStore(LocalStore):
    """A local store whose writes of the root metadata (the progress marker) take longer.

    It stands for slow storage, so that a test can stop a run between any
    two segments.
    """

    def __init__(self, root: Any, *, read_only: bool = False, delay: float = 0.05) -> None:
        super().__init__(root, read_only=read_only)
        self.delay = delay

    async def set(self, key: str, value: Any) -> None:
        if key == "zarr.json":
            await asyncio.sleep(self.delay)
        await super().set(key, value)


class FailingStore(LocalStore):
    """A local store that fails on the ``fail_at``-th chunk write of ``posterior/alpha``."""

    def __init__(self, root: Any, *, read_only: bool = False, fail_at: int = 3) -> None:
        super().__init__(root, read_only=read_only)
        self.fail_at = fail_at
        self.count = 0

    async def set(self, key: str, value: Any) -> None:
        if key.startswith("posterior/alpha/c/"):
            self.count += 1
            if self.count == self.fail_at:
                raise OSError("injected write failure")
        await super().set(key, value)
