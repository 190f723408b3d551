"""A first call traces the kernel and compiles as little as it can, and a second none.

Counted: calls of the kernel's Python function (each is a trace: abstract probe,
the split check or a compiled program) and XLA compilations (JAX's
``backend_compile_duration`` events, by program name). On the package's main
branch before this test existed, a first ``predict`` of this kernel traced it
9 times and compiled 77 programs (3 of them block programs, the others single
operations run eagerly by the row-split check and the probes).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.optim import Adam

from dopax import ImpactModel

N_ROWS = 300
N_DRAWS = 40
BLOCK_PROGRAM = "jit(local)"
SPLIT_CHECK = "jit(split_runs)"


class Counts:
    def __init__(self) -> None:
        self.traces = 0
        self.compiled: collections.Counter[str] = collections.Counter()

    def reset(self) -> None:
        self.traces = 0
        self.compiled.clear()

    def __repr__(self) -> str:
        return f"traces={self.traces}, compiled={dict(self.compiled)}"


@pytest.fixture(autouse=True)
def no_persistent_cache() -> Iterator[None]:
    """Count compilations as a process without JAX's persistent cache makes them.

    The suite shares one cache folder (``tests/conftest.py``); a program loaded
    from it is not compiled, which would hide what a first call costs.
    """
    from jax.experimental.compilation_cache import compilation_cache

    before = jax.config.values["jax_compilation_cache_dir"]
    jax.config.update("jax_compilation_cache_dir", None)
    compilation_cache.reset_cache()
    try:
        yield
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
        compilation_cache.reset_cache()


@pytest.fixture
def counts() -> Iterator[Counts]:
    found = Counts()

    def listen(event: str, duration: float, **kwargs: Any) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            found.compiled[str(kwargs.get("fun_name"))] += 1

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield found
    finally:
        unregister = getattr(jax.monitoring, "unregister_event_duration_listener", None)
        if unregister is None:  # jax before 0.8 has only the private form
            from jax._src import monitoring

            unregister = monitoring._unregister_event_duration_listener_by_callback
        unregister(listen)


def counted_model(counts: Counts) -> ImpactModel:
    """The W1 kernel, counting its traces (a fresh function: no program of it is cached)."""

    def kernel(X: Any, y: Any = None) -> None:
        counts.traces += 1
        alpha = numpyro.sample("alpha", dist.Normal(0.0, 5.0))
        beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
        sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
        with numpyro.plate("obs", X.shape[0]):
            mu = numpyro.deterministic("mu", alpha + X @ beta)
            numpyro.sample("y", dist.Normal(mu, sigma), obs=y)

    rng = np.random.default_rng(0)
    post = {
        "alpha": rng.normal(size=N_DRAWS).astype(np.float32),
        "beta": rng.normal(size=(N_DRAWS, 4)).astype(np.float32),
        "sigma": np.abs(rng.normal(size=N_DRAWS)).astype(np.float32) + 0.1,
    }
    svi = SVI(kernel, AutoNormal(kernel), Adam(0.01), Trace_ELBO())
    return ImpactModel(kernel, jax.random.key(0), svi).set_posterior_sample(post)


def data() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(N_ROWS, 4)).astype(np.float32)


def test_first_predict(counts: Counts, tmp_path: Path) -> None:
    model = counted_model(counts)
    X = data()
    key = jax.random.key(3)
    counts.reset()
    model.predict(X, rng_key=key, output_dir=tmp_path, progress=False)
    # probes at 2 rows (also the model's first trace) and 3 rows, then the block
    # program, compiled once: sizing reads the memory analysis of the very program
    # the run uses. All rows fit one block, so the split check is not needed.
    assert counts.traces == 3, counts
    assert counts.compiled[BLOCK_PROGRAM] == 1, counts
    assert counts.compiled[SPLIT_CHECK] == 0, counts
    assert sum(counts.compiled.values()) <= 3, counts  # the rest: the call key, eagerly
    counts.reset()
    model.predict(X, rng_key=key, output_dir=tmp_path, progress=False)
    assert counts.traces == 0 and not counts.compiled, counts
    # rows split into three blocks: the kernel is checked once (one program of
    # three traces), and the new block shape compiled once; the last block
    # reuses it
    counts.reset()
    model.predict(X, rng_key=key, batch_size=100, output_dir=tmp_path, progress=False)
    assert counts.traces == 3 + 1, counts
    assert counts.compiled[SPLIT_CHECK] == 1 and counts.compiled[BLOCK_PROGRAM] == 1, counts
    counts.reset()
    model.predict(X[:290], rng_key=key, batch_size=100, output_dir=tmp_path, progress=False)
    assert counts.compiled[BLOCK_PROGRAM] == 0, counts  # 90 rows padded to the 100-row block


def test_first_predict_on_batch_and_log_likelihood(counts: Counts) -> None:
    model = counted_model(counts)
    X = data()
    counts.reset()
    out = model.predict_on_batch(X, rng_key=jax.random.key(3), return_datatree=False)
    assert counts.traces == 3 and counts.compiled[BLOCK_PROGRAM] == 1, counts
    assert counts.compiled[SPLIT_CHECK] == 0, counts
    counts.reset()
    model.log_likelihood(X, out["y"][0], store="memory", progress=False)
    # the probe with ``y`` observed (its sites), the probe at 3 rows, the program
    assert counts.traces == 3 and counts.compiled[BLOCK_PROGRAM] == 1, counts
    assert counts.compiled[SPLIT_CHECK] == 0, counts


def test_first_compare_scenarios_and_new_values(counts: Counts) -> None:
    model = counted_model(counts)
    X = data()
    counts.reset()
    model.compare_scenarios(
        X, {"base": {}, "shift": {"X": X + 1.0}}, baseline="base", progress=False
    )
    # probes at 2 and 3 rows (shared by both scenarios), then the scenario program,
    # which runs the kernel once per scenario
    assert counts.traces == 2 + 2, counts
    assert counts.compiled[BLOCK_PROGRAM] == 1 and counts.compiled[SPLIT_CHECK] == 0, counts
    assert sum(counts.compiled.values()) <= 3, counts
    counts.reset()
    model.compare_scenarios(
        X, {"base": {}, "shift": {"X": X - 2.0}}, baseline="base", progress=False
    )
    assert counts.traces == 0 and not counts.compiled, counts


def test_persistent_compilation_cache(counts: Counts, tmp_path: Path) -> None:
    from dopax.config import config_context
    from dopax.parallel.sharded import compiled_block

    hits: list[str] = []

    def listen(event: str, **kwargs: Any) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            hits.append(event)

    folder = tmp_path / "jax-cache"
    X = data()
    jax.monitoring.register_event_listener(listen)
    try:
        with config_context(compilation_cache_dir=str(folder)):
            counted_model(counts).predict(X, store="memory", progress=False)
            assert any(folder.iterdir())  # the programs were written
            # as in a new process: nothing compiled in memory
            jax.clear_caches()
            compiled_block.cache_clear()
            counts.reset()
            counted_model(counts).predict(X, store="memory", progress=False)
            assert hits, counts  # the block program came from the folder
    finally:
        jax.monitoring.unregister_event_listener(listen)
    # outside the setting the next call stops using the folder
    before = len(list(folder.iterdir()))
    counted_model(counts).predict(X[:100], store="memory", progress=False)
    assert len(list(folder.iterdir())) == before
