"""A per-row latent in an MCMC trace: each row block reads its rows x draws from the store.

The posterior of ``z`` (rows x draws) is larger than the call's block budget;
predictions stream by rows, read only their blocks' chunks (host memory
measured with :mod:`tracemalloc`, as in ``test_trace_predict``), and equal
those from the same draws in memory and ``predict_on_batch``.
"""

from __future__ import annotations

import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import zarr
from numpyro.infer import MCMC, NUTS

import dopax
from dopax.config import config_context

N_ROWS = 60_000
CHAINS, DRAWS = 2, 150
Z_BYTES = CHAINS * DRAWS * N_ROWS * 4  # 72 MB, against a 4 MiB budget
BUDGET = 4 << 20


def kernel(X: Any, y: Any = None) -> None:
    a = numpyro.sample("a", dist.Normal(0.0, 1.0))
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    with numpyro.plate("obs", X.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Poisson(jnp.exp(a + X[:, 0] + s * z)), obs=y)


def _mcmc() -> MCMC:
    return MCMC(
        NUTS(kernel, max_tree_depth=3),
        num_warmup=50,
        num_samples=DRAWS,
        num_chains=CHAINS,
        chain_method="sequential",
        progress_bar=False,
    )


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    X = rng.normal(scale=0.3, size=(N_ROWS, 2)).astype(np.float32)
    y = rng.poisson(np.exp(0.5 + X[:, 0] + 0.5 * rng.normal(size=N_ROWS))).astype(np.int32)
    path = Path(tmp_path_factory.mktemp("rows")) / "trace.zarr"
    model = dopax.ImpactModel(kernel, jax.random.key(0), _mcmc())
    # 50 draws of z are 6 MB: its chunks are cut along its rows (1 MiB at most)
    model.fit_on_batch(
        X,
        y,
        rng_key=jax.random.key(1),
        progress=False,
        trace=dopax.ZarrTrace(path, draws_per_chunk=50),
    )
    tracemalloc.start()
    try:
        with config_context(
            memory_budget_bytes=BUDGET, static_chunk_bytes=1 << 20, input_window_bytes=BUDGET
        ):
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # no "rows are processed together"
                tree = model.predict(
                    X, rng_key=jax.random.key(3), output_dir=path.parent / "pred", progress=False
                )
            peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return {"X": X, "y": y, "path": path, "model": model, "tree": tree, "peak": peak}


def test_the_trace_chunks_z_by_rows(traced: dict[str, Any]) -> None:
    z = zarr.open_group(str(traced["path"]), mode="r")["posterior"]["z"]
    assert z.shape == (CHAINS, DRAWS, N_ROWS)
    assert isinstance(z, zarr.Array)
    assert z.chunks[1] == 50 and z.chunks[2] < N_ROWS


def test_rows_stream_and_never_load_z_whole(traced: dict[str, Any]) -> None:
    tree = traced["tree"]
    assert tree.attrs["path"] == "rows"
    assert tree.attrs["batch_size"] < N_ROWS  # the budget split the rows
    assert tree["posterior_predictive"]["y"].shape == (CHAINS, DRAWS, N_ROWS)
    # a few blocks of z and a few of the trace's chunks in flight, never all of z
    assert traced["peak"] < Z_BYTES / 2, (traced["peak"], Z_BYTES)


def test_draws_equal_those_of_the_draws_in_memory(traced: dict[str, Any], tmp_path: Path) -> None:
    model, X = traced["model"], traced["X"]
    in_memory = dopax.ImpactModel(kernel, jax.random.key(0), _mcmc())
    in_memory.set_posterior_sample(model.posterior)
    key = jax.random.key(3)
    want = in_memory.predict(X, rng_key=key, batch_size=1_000, store="memory", progress=False)
    got = traced["tree"]["posterior_predictive"]["y"].values
    np.testing.assert_array_equal(
        got.reshape(-1, N_ROWS), want["posterior_predictive"]["y"].values[0]
    )
    on_batch = model.predict_on_batch(X, rng_key=key)
    np.testing.assert_array_equal(
        on_batch["posterior_predictive"]["y"].values.reshape(got.shape), got
    )
    ll = model.log_likelihood(X, traced["y"], batch_size=700, store="memory", progress=False)
    ll_mem = in_memory.log_likelihood(
        X, traced["y"], batch_size=N_ROWS, store="memory", progress=False
    )
    np.testing.assert_allclose(
        ll["log_likelihood"]["y"].values.reshape(-1, N_ROWS),
        ll_mem["log_likelihood"]["y"].values.reshape(-1, N_ROWS),
        rtol=1e-5,
        atol=1e-5,
    )
