"""Block and step sizes follow the kernel's own memory, and never change the draws."""

from __future__ import annotations

import logging
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.optim import Adam

from dopax import ImpactModel
from dopax.config import config_context, get_config

N_DRAWS = 40
HIDDEN = 256


def linear_kernel(X: Any, y: Any = None) -> None:
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("obs", X.shape[0]):
        mu = numpyro.deterministic("mu", X @ beta)
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def wide_kernel(X: Any, y: Any = None) -> None:
    # One hidden layer of HIDDEN units per row: large temporaries per cell.
    w1 = numpyro.sample("w1", dist.Normal(0.0, 1.0).expand([X.shape[1], HIDDEN]))
    w2 = numpyro.sample("w2", dist.Normal(0.0, 1.0).expand([HIDDEN]))
    hidden = jnp.tanh(X @ w1)
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=hidden @ w2 / HIDDEN), obs=y)


def model_with(kernel: Any, post: dict[str, np.ndarray]) -> ImpactModel:
    svi = SVI(kernel, AutoNormal(kernel), Adam(0.01), Trace_ELBO())
    model = ImpactModel(kernel, jax.random.key(0), svi)
    model.set_posterior_sample(post)
    return model


def plan_of(caplog: pytest.LogCaptureFixture) -> tuple[int, int, int]:
    for record in caplog.records:
        m = re.search(r"blocks of (\d+) draws x (\d+) rows, (\d+) draw-row cells", record.message)
        if m:
            return int(m[1]), int(m[2]), int(m[3])
    raise AssertionError("no block plan was logged")


def test_fused_kernel_runs_each_block_in_one_step(
    caplog: pytest.LogCaptureFixture, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    post = {
        "beta": rng.normal(size=(N_DRAWS, 3)).astype(np.float32),
        "sigma": np.abs(rng.normal(size=N_DRAWS)).astype(np.float32),
    }
    X = rng.normal(size=(5000, 3)).astype(np.float32)
    model = model_with(linear_kernel, post)
    budget = 2**20
    with caplog.at_level(logging.DEBUG, logger="dopax"), config_context(memory_budget_bytes=budget):
        tree = model.predict(X, rng_key=jax.random.key(3), output_dir=tmp_path, progress=False)
    draws, rows, step = plan_of(caplog)
    assert draws * rows * 8 <= budget  # y and mu, float32
    assert step >= draws * rows  # temporaries fuse away: one vectorised step per block
    reference = model.predict_on_batch(X, rng_key=jax.random.key(3), return_datatree=False)
    np.testing.assert_allclose(
        tree["posterior_predictive/y"].values[0], reference["y"], rtol=1e-5, atol=1e-6
    )


def test_wide_kernel_gets_bounded_steps_and_same_draws(
    caplog: pytest.LogCaptureFixture, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    post = {
        "w1": rng.normal(size=(N_DRAWS, 8, HIDDEN)).astype(np.float32),
        "w2": rng.normal(size=(N_DRAWS, HIDDEN)).astype(np.float32),
    }
    X = rng.normal(size=(3000, 8)).astype(np.float32)
    model = model_with(wide_kernel, post)
    budget = 64 * 2**20
    with caplog.at_level(logging.DEBUG, logger="dopax"), config_context(memory_budget_bytes=budget):
        tree = model.predict(X, rng_key=jax.random.key(3), output_dir=tmp_path, progress=False)
    draws, rows, step = plan_of(caplog)
    # a cell's hidden layer alone is HIDDEN float32s; steps keep it within half the budget
    assert step * HIDDEN * 4 <= budget
    assert step < draws * rows
    if jax.default_backend() == "cpu":
        # matrix products dominate: one draw per step over every row, draws split
        assert (draws, rows) == (N_DRAWS // get_config().min_draw_blocks, X.shape[0])
        assert rows <= step < 2 * rows
    reference = model.predict_on_batch(X, rng_key=jax.random.key(3), return_datatree=False)
    np.testing.assert_array_equal(tree["posterior_predictive/y"].values[0], reference["y"])


def test_default_budget_depends_on_the_kind_of_call() -> None:
    from types import SimpleNamespace

    from dopax.config import ExecutionConfig
    from dopax.execution.sizing import Footprint, _plan, _whole_draw_blocks

    default = ExecutionConfig()
    assert default.memory_budget_bytes is None
    assert default.budget_bytes() == 128 * 2**20
    assert default.budget_bytes(scenarios=True) == 256 * 2**20
    chosen = ExecutionConfig(memory_budget_bytes=50 * 2**20)
    assert chosen.budget_bytes() == chosen.budget_bytes(scenarios=True) == 50 * 2**20
    for bad in (0, -1, 1.5, True, "1GB"):
        with pytest.raises(ValueError, match="memory_budget_bytes"):
            ExecutionConfig(memory_budget_bytes=bad)
    # a setting without effect is accepted, loudly, and still checked
    assert default.host_threads is None
    with pytest.warns(FutureWarning, match="`host_threads` has no effect") as record:
        assert ExecutionConfig(host_threads=4).host_threads == 4
        with config_context(host_threads=4):
            pass
    assert [w.filename for w in record] == [__file__, __file__]  # the lines that set it
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match="host_threads"):
        ExecutionConfig(host_threads=0)

    job = SimpleNamespace(n_draws=1000, n_rows=10_000_000, split_rows=True)
    # a forward pass: four blocks of y (float32) within 128 MiB
    forward = Footprint(per_row=4, per_draw=0, alive=4)
    plan = _plan(job, forward, 1, None, default, 0.0, False)  # type: ignore[arg-type]
    held = forward.alive * plan.draw_block * plan.row_block * forward.per_row
    assert 64 * 2**20 < held <= 128 * 2**20
    # a scenario comparison: three blocks of every draw within 256 MiB
    scenarios = Footprint(per_row=20, per_draw=0, alive=3, whole_draws=True, one_draw_steps=True)
    plan = _whole_draw_blocks(job, scenarios, None, default)  # type: ignore[arg-type]
    held = scenarios.alive * plan.draw_block * plan.row_block * scenarios.per_row
    assert 128 * 2**20 < held <= 256 * 2**20 + 3 * 1000 * 20 * default.row_multiple
