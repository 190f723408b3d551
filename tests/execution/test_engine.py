"""End-to-end checks of the streaming engine through the public model API.

Every test uses fixed posterior draws (``set_posterior_sample``) so nothing is
fitted. Draws of row-independent kernels must not depend on how the call is
cut (batch size, store, shard axis, device count, ``*_on_batch`` twin).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import xarray as xr
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.optim import Adam

import dopax
import dopax.streaming.sinks as sinks_module
from dopax import ImpactModel, open_result
from dopax.exceptions import DopaxError, IncompleteResultError

N_ROWS = 40
N_DRAWS = 50
N_FEATURES = 3
RTOL = 1e-5
ATOL = 1e-6
REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- kernels


def linear_kernel(X: Any, y: Any = None) -> None:
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("obs", X.shape[0]):
        mu = numpyro.deterministic("mu", X @ beta)
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def bernoulli_kernel(X: Any, y: Any = None) -> None:
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]))
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=X @ beta), obs=y)


def latent_kernel(X: Any, y: Any = None) -> None:
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]))
    with numpyro.plate("obs", X.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(X @ beta + z, 0.5), obs=y)


def global_det_kernel(X: Any, y: Any = None) -> None:
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]))
    numpyro.deterministic("beta_norm", jnp.sum(beta**2))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(X @ beta, sigma), obs=y)


def coupled_kernel(X: Any, y: Any = None) -> None:
    Xs = (X - X.mean(0)) / (X.std(0) + 1.0)
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("obs", X.shape[0]):
        mu = numpyro.deterministic("mu", Xs @ beta)
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


# --------------------------------------------------------------------------- helpers


def make_model(kernel: Any, seed: int = 0) -> ImpactModel:
    svi = SVI(kernel, AutoNormal(kernel), Adam(0.01), Trace_ELBO())
    return ImpactModel(kernel, jax.random.key(seed), svi)


def make_x(n_rows: int = N_ROWS, n_features: int = N_FEATURES, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n_rows, n_features)).astype(np.float32)


def make_posterior(n_features: int = N_FEATURES, *, sigma: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    post = {"beta": rng.normal(size=(N_DRAWS, n_features)).astype(np.float32)}
    if sigma:
        post["sigma"] = np.abs(rng.normal(size=(N_DRAWS,))).astype(np.float32) + 0.1
    return post


def values(tree: xr.DataTree, group: str = "posterior_predictive") -> dict[str, np.ndarray]:
    node = tree[group]
    assert isinstance(node, xr.DataTree)
    return {str(k): np.asarray(v.values) for k, v in node.data_vars.items()}


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray], *, exact: bool = False) -> None:
    assert set(a) == set(b)
    for name in a:
        assert a[name].shape == b[name].shape, name
        if exact or np.issubdtype(a[name].dtype, np.integer) or a[name].dtype == bool:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
        else:
            np.testing.assert_allclose(a[name], b[name], rtol=RTOL, atol=ATOL, err_msg=name)


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("dopax-writer-") and t.is_alive()]


KEY = 7


def on_batch_and_streamed(
    model: ImpactModel, X: np.ndarray, tmp_path: Path
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``predict_on_batch`` and a streamed ``predict`` (7-row batches), both warning
    that rows are processed together."""
    key = jax.random.key(KEY)
    with pytest.warns(UserWarning, match="rows are processed together"):
        ref = values(model.predict_on_batch(X, rng_key=key))  # type: ignore[arg-type]
    with pytest.warns(UserWarning, match="rows are processed together"):
        tree = model.predict(X, rng_key=key, batch_size=7, output_dir=tmp_path, progress=False)
    return ref, values(tree)


# --------------------------------------------------------------------------- 1. batch shapes


@pytest.mark.parametrize(
    ("kernel", "exact"), [(linear_kernel, False), (bernoulli_kernel, True)], ids=["linear", "bern"]
)
def test_draws_identical_across_batching_store_and_shard_axis(
    kernel: Any, exact: bool, tmp_path: Path
) -> None:
    model = make_model(kernel).set_posterior_sample(
        make_posterior(sigma=kernel is not bernoulli_kernel)
    )
    X = make_x()
    key = jax.random.key(KEY)
    ref_tree = model.predict_on_batch(X, rng_key=key)
    assert isinstance(ref_tree, xr.DataTree)
    ref = values(ref_tree)
    assert ref["y"].shape == (1, N_DRAWS, N_ROWS)
    if exact:
        assert set(np.unique(ref["y"])) == {0, 1}
        # not the same pattern for every draw
        assert len({tuple(r) for r in ref["y"][0]}) > N_DRAWS // 2
    else:
        assert "mu" in ref
        np.testing.assert_allclose(
            ref["mu"][0], make_posterior()["beta"] @ X.T, rtol=RTOL, atol=1e-5
        )
        # draws differ across rows and draws (no key reuse)
        assert np.unique(ref["y"][0].round(6)).size > N_DRAWS * N_ROWS // 2
    for batch_size in (7, 64, None):
        for store in ("persistent", "memory"):
            for shard_axis in ("obs", "draw"):
                tree = model.predict(
                    X,
                    rng_key=key,
                    batch_size=batch_size,
                    store=store,
                    shard_axis=shard_axis,
                    output_dir=tmp_path if store == "persistent" else None,
                    progress=False,
                )
                got = values(tree)
                try:
                    assert_same(got, ref, exact=exact)
                except AssertionError as err:  # pragma: no cover - diagnostics
                    raise AssertionError(f"{batch_size=} {store=} {shard_axis=}: {err}") from err
    dict_out = model.predict_on_batch(X, rng_key=key, return_datatree=False)
    assert isinstance(dict_out, dict)
    np.testing.assert_array_equal(np.asarray(dict_out["y"]).reshape(ref["y"].shape), ref["y"])


def test_draw_of_a_row_depends_only_on_key_draw_and_row() -> None:
    model = make_model(linear_kernel).set_posterior_sample(make_posterior())
    X = make_x()
    key = jax.random.key(KEY)
    full = values(model.predict_on_batch(X, rng_key=key))  # type: ignore[arg-type]
    sub = values(model.predict_on_batch(X[:13], rng_key=key))  # type: ignore[arg-type]
    np.testing.assert_allclose(sub["y"], full["y"][:, :, :13], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("source", ["zarr", "dask"])
def test_inputs_read_block_by_block_give_the_same_draws(source: str, tmp_path: Path) -> None:
    # X read from a chunked Zarr array (chunks of 13 rows: blocks of 7 rows
    # straddle them) or an unevenly chunked dask array gives the draws of the
    # same X in memory.
    import dask.array as da
    import zarr

    model = make_model(linear_kernel).set_posterior_sample(make_posterior())
    X = make_x()
    key = jax.random.key(KEY)
    if source == "zarr":
        lazy: Any = zarr.create_array(
            tmp_path / "X.zarr", shape=X.shape, chunks=(13, N_FEATURES), dtype=X.dtype
        )
        lazy[:] = X
    else:
        lazy = da.from_array(X, chunks=((5, 20, 15), N_FEATURES))
    ref = values(model.predict(X, rng_key=key, batch_size=7, store="memory", progress=False))
    for batch_size in (7, None):
        got = values(
            model.predict(
                lazy, rng_key=key, batch_size=batch_size, output_dir=tmp_path, progress=False
            )
        )
        assert_same(got, ref)


# --------------------------------------------------------------------------- 2. device counts

_SUBPROCESS = """
import json, sys
import jax, numpy as np
sys.path.insert(0, {tests!r})
from execution.test_engine import (make_model, make_posterior, make_x, linear_kernel, values,
    KEY, scenarios_of, answers_of)
assert jax.device_count() == 4, jax.devices()
model = make_model(linear_kernel).set_posterior_sample(make_posterior())
X = make_x()
out = {{}}
for axis in ("obs", "draw"):
    tree = model.predict(X, rng_key=jax.random.key(KEY), batch_size=7, shard_axis=axis,
                         output_dir={out_dir!r}, progress=False)
    assert tree.attrs["dopax_devices"] == 4, tree.attrs
    assert tree.attrs["dopax_shard_axis"] == axis, tree.attrs
    for k, v in values(tree).items():
        out[axis + "__" + k] = v
# a kernel that squeezes away the row axis of one row: no device gets a single row
from execution.test_row_collapse import make_model as squeeze_model
squeezing = squeeze_model()
ref = squeezing.predict_on_batch(X[:9], rng_key=jax.random.key(KEY), return_datatree=False)
for batch_size in (4, 5):
    tree = squeezing.predict(X[:9], rng_key=jax.random.key(KEY), batch_size=batch_size,
                             shard_axis="obs", output_dir={out_dir!r}, progress=False)
    np.testing.assert_allclose(values(tree)["p"][0], ref["p"], rtol=1e-6)
    np.testing.assert_array_equal(values(tree)["y"][0], ref["y"])
effect = model.compare_scenarios(
    X, scenarios_of(X), baseline="base", rng_key=jax.random.key(KEY), batch_size=8,
    keep_draws=True, store="memory", progress=False)
out["effect__devices"] = np.asarray(effect.tree.attrs["dopax_devices"])
out["effect__draws"] = effect.tree["scenario_draws"]["y"].values
out["effect__ate"] = effect.tree["draws"]["ate"].values
out["effect__rows"] = effect.tree["rows"]["effect_mean"].values
out.update(answers_of(model, X))
np.savez({npz!r}, **out)
"""


def scenarios_of(X: np.ndarray) -> dict[str, dict[str, Any]]:
    return {"base": {}, "shift": {"X": X + 1.0}}


def answers_of(model: ImpactModel, X: np.ndarray) -> dict[str, np.ndarray]:
    """``summarize`` and ``loo`` of ``model``, and ``summarize`` of a kernel coupling rows."""
    import warnings

    key = jax.random.key(KEY)
    # an outcome drawn apart from the summarised draws (a draw's own value would tie)
    y = np.asarray(
        model.predict_on_batch(X, rng_key=jax.random.key(KEY + 1), return_datatree=False)["y"][0]  # type: ignore[index]
    )
    tree = model.summarize(X, y, rng_key=key, batch_size=8, store="memory", progress=False)
    out = {f"summary__{k}": np.asarray(v.values) for k, v in tree["summary"].data_vars.items()}
    out["summary__devices"] = np.asarray(tree.attrs["dopax_devices"])
    with warnings.catch_warnings():
        # the fixed draws are no posterior of these rows: every Pareto k is large
        warnings.filterwarnings("ignore", message=".*estimated Pareto k above")
        elpd = model.loo(X, y, batch_size=8, store="memory", progress=False)
    out["loo__loo_i"], out["loo__pareto_k"] = elpd.loo_i.values, elpd.pareto_k.values
    coupled = make_model(coupled_kernel).set_posterior_sample(make_posterior())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*rows are processed together")
        tree = coupled.summarize(X, rng_key=key, batch_size=8, store="memory", progress=False)
    out["coupled__y_upper"] = tree["summary"]["y_upper"].values
    out["coupled__devices"] = np.asarray(tree.attrs["dopax_devices"])
    return out


def test_four_devices_match_one_device(tmp_path: Path) -> None:
    npz = tmp_path / "four.npz"
    code = _SUBPROCESS.format(
        tests=str(REPO / "tests"), out_dir=str(tmp_path / "out4"), npz=str(npz)
    )
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "4", "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    four = np.load(npz)
    model = make_model(linear_kernel).set_posterior_sample(make_posterior())
    X = make_x()
    key = jax.random.key(KEY)
    ref = values(model.predict_on_batch(X, rng_key=key))  # type: ignore[arg-type]
    for axis in ("obs", "draw"):
        one = values(
            model.predict(
                X,
                rng_key=key,
                batch_size=7,
                shard_axis=axis,
                output_dir=tmp_path / "out1",
                progress=False,
            )
        )
        assert_same(one, ref)
        got = {k.split("__", 1)[1]: four[k] for k in four.files if k.startswith(axis + "__")}
        assert_same(got, one)
    # compare_scenarios shards too: on 4 devices it records them, and its draws are
    # those of one device (sums over rows differ only in float32 rounding order).
    effect = model.compare_scenarios(
        X, scenarios_of(X), baseline="base", rng_key=key, batch_size=8, keep_draws=True,
        store="memory", progress=False,
    )  # fmt: skip
    assert int(four["effect__devices"]) == 4
    assert effect.tree.attrs["dopax_devices"] == 1
    assert_same({"y": four["effect__draws"]}, {"y": effect.tree["scenario_draws"]["y"].values})
    np.testing.assert_allclose(four["effect__ate"], effect.tree["draws"]["ate"].values, rtol=1e-5)
    np.testing.assert_allclose(
        four["effect__rows"], effect.tree["rows"]["effect_mean"].values, rtol=1e-5, atol=1e-6
    )
    # summaries and PSIS-LOO reduce every draw of a row on one device: rows are
    # split across the four, and a kernel that couples rows runs on one of them
    one_device = answers_of(model, X)
    assert int(four["summary__devices"]) == 4 and int(four["coupled__devices"]) == 1
    for name, value in one_device.items():
        if not name.endswith("devices"):
            np.testing.assert_allclose(four[name], value, rtol=1e-5, atol=1e-5, err_msg=name)


# --------------------------------------------------------------------------- 3. per-row latents


def test_per_row_latent_in_sample_and_fresh(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    post = {
        "beta": rng.normal(size=(N_DRAWS, N_FEATURES)).astype(np.float32),
        "z": rng.normal(size=(N_DRAWS, N_ROWS)).astype(np.float32),
    }
    model = make_model(latent_kernel).set_posterior_sample(post)
    X = make_x()
    key = jax.random.key(KEY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rows are split like any kernel's: no warning
        ref = values(model.predict_on_batch(X, rng_key=key))  # type: ignore[arg-type]
        tree = model.predict(X, rng_key=key, batch_size=7, output_dir=tmp_path, progress=False)
    assert tree.attrs["path"] == "rows" and tree.attrs["batch_size"] == 7
    assert tree["posterior_predictive"]["y"].encoding["chunks"][-1] == 7
    streamed = values(tree)
    assert_same(streamed, ref)
    # the posterior z is used: mean of y - X beta is z (noise sd 0.5, 50 draws)
    resid = ref["y"][0] - post["beta"] @ X.T
    assert np.corrcoef(resid.ravel(), post["z"].ravel())[0, 1] > 0.8

    X_new = make_x(n_rows=17, seed=9)
    out = model.predict(
        X_new, rng_key=key, in_sample=False, batch_size=7, output_dir=tmp_path, progress=False
    )
    pred = values(out, "predictions")
    assert pred["y"].shape == (1, N_DRAWS, 17)
    assert np.all(np.isfinite(pred["y"]))
    on_batch = values(
        model.predict_on_batch(X_new, rng_key=key, in_sample=False),  # type: ignore[arg-type]
        "predictions",
    )
    assert_same(pred, on_batch)


# --------------------------------------------------------------------------- 4. global site


def test_global_deterministic_site_streams(tmp_path: Path) -> None:
    post = make_posterior()
    model = make_model(global_det_kernel).set_posterior_sample(post)
    X = make_x()
    key = jax.random.key(KEY)
    ref = values(model.predict_on_batch(X, rng_key=key))  # type: ignore[arg-type]
    assert ref["beta_norm"].shape == (1, N_DRAWS)
    np.testing.assert_allclose(ref["beta_norm"][0], (post["beta"] ** 2).sum(1), rtol=RTOL)
    for store in ("persistent", "memory"):
        for axis in ("obs", "draw"):
            tree = model.predict(
                X,
                rng_key=key,
                batch_size=7,
                store=store,
                shard_axis=axis,
                output_dir=tmp_path if store == "persistent" else None,
                progress=False,
            )
            assert_same(values(tree), ref)


# --------------------------------------------------------------------------- 5. shapes, coupling


def test_square_x_is_row_independent(tmp_path: Path) -> None:
    model = make_model(linear_kernel).set_posterior_sample(make_posterior(n_features=10))
    X = make_x(n_rows=10, n_features=10)
    key = jax.random.key(KEY)
    ref = values(model.predict_on_batch(X, rng_key=key))  # type: ignore[arg-type]
    for batch_size in (3, None):
        tree = model.predict(
            X, rng_key=key, batch_size=batch_size, output_dir=tmp_path, progress=False
        )
        assert_same(values(tree), ref)


def test_row_coupling_kernel_runs_rows_together(tmp_path: Path) -> None:
    model = make_model(coupled_kernel).set_posterior_sample(make_posterior())
    X = make_x()
    key = jax.random.key(KEY)
    # one block holds every row: nothing is split, so nothing is checked or said
    ref = values(model.predict_on_batch(X, rng_key=key))  # type: ignore[arg-type]
    Xs = (X - X.mean(0)) / (X.std(0) + 1.0)
    np.testing.assert_allclose(ref["mu"][0], make_posterior()["beta"] @ Xs.T, rtol=1e-4, atol=1e-5)
    for store in ("persistent", "memory"):
        with pytest.warns(UserWarning, match="rows are processed together"):
            tree = model.predict(
                X,
                rng_key=key,
                batch_size=7,
                store=store,
                output_dir=tmp_path if store == "persistent" else None,
                progress=False,
            )
        assert_same(values(tree), ref)


def poisson_kernel(X: Any, y: Any = None) -> None:
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]))
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Poisson(jnp.exp(0.3 * (X @ beta) + 1.0)), obs=y)


def test_poisson_kernel_streams_rows_and_draws_the_right_counts(tmp_path: Path) -> None:
    """Poisson sites draw each row from its own stream: rows split, with no warning."""
    post = make_posterior(sigma=False)
    model = make_model(poisson_kernel).set_posterior_sample(post)
    X = make_x(n_rows=400)
    key = jax.random.key(KEY)
    ref = values(model.predict_on_batch(X, rng_key=key))  # type: ignore[arg-type]
    for store in ("persistent", "memory"):
        tree = model.predict(
            X,
            rng_key=key,
            batch_size=7,
            store=store,
            output_dir=tmp_path if store == "persistent" else None,
            progress=False,
        )
        assert_same(values(tree), ref, exact=True)
    # a row's counts do not depend on the rows after it
    sub = values(model.predict_on_batch(X[:13], rng_key=key))  # type: ignore[arg-type]
    np.testing.assert_array_equal(sub["y"], ref["y"][:, :, :13])
    # known answer: the mean count of each row over draws is the mean of its rates
    rates = np.exp(0.3 * (post["beta"] @ X.T) + 1.0)  # (draws, rows)
    counts = ref["y"][0]
    assert counts.dtype.kind == "i" and counts.min() >= 0
    z = (counts.mean() - rates.mean()) / np.sqrt(rates.mean() / counts.size)
    assert abs(z) < 4, z
    # each count is a Poisson draw given its rate: standardised residuals have variance 1
    resid = (counts - rates) / np.sqrt(rates)
    assert abs(resid.var() - 1.0) < 0.05


# --------------------------------------------------------------------------- 6. log-likelihood


def test_log_likelihood_matches_numpyro(tmp_path: Path) -> None:
    post = make_posterior()
    model = make_model(linear_kernel).set_posterior_sample(post)
    X = make_x()
    y = np.random.default_rng(5).normal(size=N_ROWS).astype(np.float32)
    expected = np.asarray(
        numpyro.infer.log_likelihood(
            linear_kernel, {k: jnp.asarray(v) for k, v in post.items()}, X=X, y=y
        )["y"]
    ).reshape(1, N_DRAWS, N_ROWS)
    for batch_size in (7, None):
        tree = model.log_likelihood(
            X, y, batch_size=batch_size, output_dir=tmp_path, progress=False
        )
        got = values(tree, "log_likelihood")
        assert set(got) == {"y"}
        np.testing.assert_allclose(got["y"], expected, rtol=RTOL, atol=1e-5)


# --------------------------------------------------------------------------- 7. prior predictive


def test_prior_predictive_streams_like_on_batch(tmp_path: Path) -> None:
    model = make_model(latent_kernel)
    X = make_x()
    key = jax.random.key(KEY)
    sites = ["y", "z", "beta"]
    ref_tree = model.sample_prior_predictive_on_batch(
        X, num_samples=N_DRAWS, rng_key=key, return_sites=sites
    )
    assert isinstance(ref_tree, xr.DataTree)
    ref = values(ref_tree, "prior_predictive")
    assert ref["z"].shape == (1, N_DRAWS, N_ROWS)
    # a local latent is independent per row (not one value broadcast)
    assert np.all(np.std(ref["z"][0], axis=1) > 0.1)
    assert abs(np.corrcoef(ref["z"][0, :, 0], ref["z"][0, :, 1])[0, 1]) < 0.6
    for batch_size in (7, 64, None):
        for axis in ("obs", "draw"):
            tree = model.sample_prior_predictive(
                X,
                num_samples=N_DRAWS,
                rng_key=key,
                return_sites=sites,
                batch_size=batch_size,
                shard_axis=axis,
                output_dir=tmp_path,
                progress=False,
            )
            assert_same(values(tree, "prior_predictive"), ref)


# --------------------------------------------------------------------------- 8. output store


def test_output_store_is_self_describing(tmp_path: Path) -> None:
    model = make_model(linear_kernel).set_posterior_sample(make_posterior())
    X = make_x()
    key = jax.random.key(KEY)
    t1 = model.predict(X, rng_key=key, output_dir=tmp_path, progress=False)
    t2 = model.predict(X, rng_key=key, output_dir=tmp_path, progress=False)
    p1, p2 = Path(t1.attrs["artifact_path"]), Path(t2.attrs["artifact_path"])
    assert p1 != p2
    assert p1.parent == tmp_path and p2.parent == tmp_path
    assert sorted(tmp_path.iterdir()) == sorted([p1, p2])
    ref = values(t1)
    del model, t1, t2
    gc.collect()
    for opened in (xr.open_datatree(p1, engine="zarr"), open_result(p1)):
        assert {"posterior", "posterior_predictive"} <= set(opened.children)
        assert_same(values(opened), ref)
        np.testing.assert_allclose(
            values(opened, "posterior")["beta"][0], make_posterior()["beta"], rtol=0
        )
        assert "created_at" in opened.attrs
        assert opened.attrs["dopax_version"] == dopax.__version__
        assert opened.attrs["artifact_path"] == str(p1)
    json.dumps({k: v for k, v in open_result(p1).attrs.items() if isinstance(v, str)})


# --------------------------------------------------------------------------- 9. temp folder


def test_chained_call_in_temp_folder_survives_gc_and_deletion_raises() -> None:
    X = make_x()
    key = jax.random.key(KEY)
    tree = (
        make_model(linear_kernel)
        .set_posterior_sample(make_posterior())
        .predict(X, rng_key=key, progress=False)
    )
    gc.collect()
    ref = values(
        make_model(linear_kernel)  # type: ignore[arg-type]
        .set_posterior_sample(make_posterior())
        .predict_on_batch(X, rng_key=key)
    )
    node = tree["posterior_predictive"]
    assert isinstance(node, xr.DataTree)
    path = Path(tree.attrs["artifact_path"])
    assert path.exists()
    assert_same({"y": np.asarray(node["y"].values)}, {"y": ref["y"]})
    shutil.rmtree(path)
    with pytest.raises((DopaxError, OSError)):
        got = np.asarray(node["mu"].values)
        assert not np.all(got == 0)  # never reached when it raises; guards against zeros


# --------------------------------------------------------------------------- 10. faults


def test_writer_failure_propagates_and_leaves_nothing_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = sinks_module.ZarrSink.write
    calls = {"n": 0}
    lock = threading.Lock()

    def failing_write(self: Any, *args: Any, **kwargs: Any) -> None:
        with lock:
            calls["n"] += 1
            n = calls["n"]
        if n == 3:
            raise OSError("disk full")
        real_write(self, *args, **kwargs)

    model = make_model(linear_kernel).set_posterior_sample(make_posterior())
    X = make_x()
    # compile first so the 5 s bound measures the failure path, not tracing
    model.predict(X, batch_size=7, output_dir=tmp_path / "warm", progress=False)
    monkeypatch.setattr(sinks_module.ZarrSink, "write", failing_write)
    tmp_path = tmp_path / "failing"
    started = time.monotonic()
    with pytest.raises(OSError, match="disk full"):
        model.predict(X, batch_size=7, output_dir=tmp_path, progress=False)
    assert time.monotonic() - started < 5.0
    assert calls["n"] >= 3
    deadline = time.monotonic() + 1.0
    while writer_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writer_threads() == []
    for folder in tmp_path.iterdir():
        with pytest.raises(IncompleteResultError):
            open_result(folder)


def test_full_disk_error_says_what_to_do(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import errno as _errno

    from dopax.streaming import sinks

    model, X, _ = _full_disk_setup()
    real = sinks.ZarrSink.write

    def full(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(_errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sinks.ZarrSink, "write", full)
    with pytest.raises(OSError) as info:
        model.predict(X, output_dir=tmp_path, progress=False)
    assert info.value.errno == _errno.ENOSPC
    assert any("disk holding the output is full" in note for note in info.value.__notes__)
    assert not any(p.name.endswith(".zarr") for p in tmp_path.iterdir())
    monkeypatch.setattr(sinks.ZarrSink, "write", real)


def _full_disk_setup():  # type: ignore[no-untyped-def]
    def k(X, y=None):  # type: ignore[no-untyped-def]
        a = numpyro.sample("a", dist.Normal(0.0, 1.0))
        with numpyro.plate("rows", X.shape[0]):
            numpyro.sample("y", dist.Normal(a + X[:, 0], 1.0), obs=y)

    model = ImpactModel(k, jax.random.key(0), SVI(k, AutoNormal(k), Adam(0.01), Trace_ELBO()))
    model.set_posterior_sample({"a": np.zeros(8, np.float32)})
    return model, np.ones((12, 2), np.float32), None
