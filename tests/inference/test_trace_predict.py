"""A model fitted to a trace predicts from the trace, a block of draws at a time.

Memory is measured with :mod:`tracemalloc`, which sees every NumPy array
(Zarr's reads included) and no XLA buffer: the figures are the host memory the
model keeps and allocates, which holding the posterior would dominate.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import xarray as xr
from numpyro.infer import MCMC, NUTS

import dopax
from dopax.config import config_context

WIDTH = 10_000  # latent values per draw: 40 KB of float32
CHAINS, DRAWS = 2, 1_000  # the posterior: 2 x 1,000 x 40 KB = 80 MB
POSTERIOR_BYTES = CHAINS * DRAWS * WIDTH * 4


def kernel(X: Any, y: Any = None) -> None:
    """A wide latent vector beside a regression that uses a few of its values."""
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([WIDTH]).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(X @ w[: X.shape[1]], sigma), obs=y)


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3)).astype(np.float32)
    y = (X @ np.array([1.0, -1.0, 0.5]) + 0.5 * rng.normal(size=300)).astype(np.float32)
    return X, y


def _mcmc() -> MCMC:
    return MCMC(
        NUTS(kernel, max_tree_depth=4),
        num_warmup=100,
        num_samples=DRAWS,
        num_chains=CHAINS,
        chain_method="sequential",
        progress_bar=False,
    )


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    X, y = _data()
    path = Path(tmp_path_factory.mktemp("wide")) / "trace.zarr"
    model = dopax.ImpactModel(kernel, jax.random.key(0), _mcmc())
    tracemalloc.start()
    try:
        model.fit_on_batch(
            X,
            y,
            rng_key=jax.random.key(1),
            progress=False,
            # 1 MB chunks: a read holds a few chunks, whatever the posterior's size
            trace=dopax.ZarrTrace(path, draws_per_chunk=25),
        )
        kept = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        # small blocks, and the copied posterior in 256 KB chunks: the copy runs
        # beside the blocks with up to four of its chunks queued for the
        # writers, which at 1 MB chunks made the peak depend on that overlap
        with config_context(memory_budget_bytes=8 << 20, static_chunk_bytes=1 << 18):
            tree = model.predict(X, batch_size=100, output_dir=path.parent / "pred", progress=False)
        predict_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return {"X": X, "y": y, "path": path, "model": model, "tree": tree, "kept": kept,
            "predict_peak": predict_peak}  # fmt: skip


def test_a_traced_model_keeps_its_draws_in_the_trace(traced: dict[str, Any]) -> None:
    # The fit's host allocations still alive afterwards (about 6 MB, whatever
    # the width: the sampler's traced programs), against the posterior's bytes.
    assert traced["kept"] < POSTERIOR_BYTES / 3, (traced["kept"], POSTERIOR_BYTES)
    # A streamed predict reads the posterior a block of draws at a time, both
    # for the forward pass and to copy it into the result's `posterior` group:
    # a few blocks and a few of the trace's chunks in flight (15 to 20 MB).
    assert traced["predict_peak"] < POSTERIOR_BYTES / 3, (traced["predict_peak"], POSTERIOR_BYTES)


def test_predictions_equal_those_of_the_draws_in_memory(
    traced: dict[str, Any], tmp_path: Path
) -> None:
    model, X = traced["model"], traced["X"]
    trace_tree = xr.open_datatree(traced["path"], engine="zarr")
    in_memory = dopax.ImpactModel(kernel, jax.random.key(0), _mcmc())
    in_memory.set_posterior_sample(model.posterior)
    for name in ("w", "sigma"):  # what the model reads is what the trace holds
        stored = trace_tree["posterior"][name].values
        np.testing.assert_array_equal(model.posterior[name], stored.reshape(-1, *stored.shape[2:]))
    key = jax.random.key(5)
    got = model.predict(X, rng_key=key, batch_size=100, output_dir=tmp_path / "a", progress=False)
    want = in_memory.predict(
        X, rng_key=key, batch_size=100, output_dir=tmp_path / "b", progress=False
    )
    n_rows = X.shape[0]
    got_y = got["posterior_predictive"]["y"].values
    assert got_y.shape == (CHAINS, DRAWS, n_rows)  # the chains of the trace
    want_y = want["posterior_predictive"]["y"].values.reshape(got_y.shape)
    np.testing.assert_array_equal(got_y, want_y)
    # the copy in the result's `posterior` group keeps the chains apart
    np.testing.assert_array_equal(got["posterior"]["w"].values, trace_tree["posterior"]["w"].values)
    assert got["posterior"]["w"].shape == (CHAINS, DRAWS, WIDTH)
    on_batch = model.predict_on_batch(X, rng_key=key)
    np.testing.assert_array_equal(on_batch["posterior_predictive"]["y"].values, want_y)


def test_scenarios_and_log_likelihood_read_the_trace(
    traced: dict[str, Any], tmp_path: Path
) -> None:
    model, X, y = traced["model"], traced["X"], traced["y"]
    in_memory = dopax.ImpactModel(kernel, jax.random.key(0), _mcmc())
    in_memory.set_posterior_sample(model.posterior)
    key = jax.random.key(9)
    scenarios = {"base": {}, "shift": {"X": X + 1.0}}
    got = model.compare_scenarios(
        X, scenarios, baseline="base", rng_key=key, batch_size=100, progress=False
    )
    want = in_memory.compare_scenarios(
        X, scenarios, baseline="base", rng_key=key, batch_size=100, progress=False
    )
    for name, draws in want.ate_draws().items():
        np.testing.assert_array_equal(got.ate_draws()[name].reshape(-1), draws.reshape(-1))
    ll = model.log_likelihood(X, y, batch_size=100, output_dir=tmp_path / "ll", progress=False)
    ll_mem = in_memory.log_likelihood(
        X, y, batch_size=100, output_dir=tmp_path / "ll2", progress=False
    )
    np.testing.assert_array_equal(
        ll["log_likelihood"]["y"].values.reshape(-1),
        ll_mem["log_likelihood"]["y"].values.reshape(-1),
    )


def _small_kernel(X: Any, y: Any = None) -> None:
    b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(X @ b, 1.0), obs=y)


def test_a_deleted_trace_is_an_error_not_missing_values(tmp_path: Path) -> None:
    # Zarr reads a missing chunk as its fill value (NaN): without a check the
    # model would predict NaN from a deleted trace, with no error.
    import shutil

    X, y = _data()
    path = tmp_path / "trace.zarr"
    mcmc = MCMC(NUTS(_small_kernel), num_warmup=50, num_samples=40, progress_bar=False)
    model = dopax.ImpactModel(_small_kernel, jax.random.key(0), mcmc)
    model.fit_on_batch(X, y, rng_key=jax.random.key(1), progress=False,
                       trace=dopax.ZarrTrace(path))  # fmt: skip
    assert np.isfinite(model.predict_on_batch(X)["posterior_predictive"]["y"].values).all()
    shutil.rmtree(path)
    with pytest.raises(FileNotFoundError, match=r"no longer in .*trace\.zarr.*refit"):
        model.predict_on_batch(X)
    out = tmp_path / "pred"
    with pytest.raises(FileNotFoundError, match="no longer in"):
        model.predict(X, batch_size=100, output_dir=out, progress=False)
    assert not out.exists() or not any(out.iterdir())  # nothing half-written is left
