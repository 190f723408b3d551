"""Streamed MCMC traces: layout, exactness, mismatches, readers (in process).

The interrupted-and-resumed runs are in ``test_trace_resume.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import arviz as az
import cloudpickle
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.optim import Adam

import dopax
from dopax.exceptions import TraceMismatchError
from dopax.inference.sample_stats import STAT_NAMES, arviz_stats
from inference import trace_case as case

matplotlib.use("Agg")

STATS = {"diverging", "energy", "lp", "n_steps", "tree_depth", "acceptance_rate", "step_size"}


# ---------------------------------------------------------------------------- exactness
@pytest.fixture(scope="module")
def plain() -> dict[str, Any]:
    """NumPyro's MCMC.run through the model (no trace) with the reference key, and another key."""
    X, y = case.data()
    model = dopax.ImpactModel(case.kernel, jax.random.key(0), case.make_mcmc())
    model.fit_on_batch(X, y, rng_key=jax.random.key(case.KEY_SEED), progress=False)
    # NumPyro's own MCMC.run with the same key, its fields under ArviZ's names.
    reference = case.make_mcmc()
    reference.run(
        jax.random.key(case.KEY_SEED),
        X=jnp.asarray(X),
        y=jnp.asarray(y),
        extra_fields=tuple(f for f in STAT_NAMES if f != "diverging"),
    )
    fields = reference.get_extra_fields(group_by_chain=True)
    stats = {
        k: np.asarray(v).reshape(-1, *np.shape(v)[2:])
        for k, v in arviz_stats(fields, nuts=True).items()
    }
    out = {"model": model, "stats": stats}
    # NumPyro's own run with another key: an independent run.
    other = case.make_mcmc()
    other.run(jax.random.key(123), X=X, y=y)
    out["independent"] = {k: np.asarray(v) for k, v in other.get_samples(True).items()}
    return out


def test_traced_run_equals_numpyro_run(
    reference_trace: dict[str, Any], plain: dict[str, Any]
) -> None:
    """A traced run gives NumPyro's own `MCMC.run` draws, statistics and last state."""
    stats = plain["stats"]
    assert set(stats) == STATS
    groups = reference_trace["groups"]
    traced = reference_trace["model"]
    for site, draws in plain["model"].posterior.items():
        np.testing.assert_array_equal(traced.posterior[site], draws)
        np.testing.assert_array_equal(groups["posterior"][site].reshape(draws.shape), draws)
    for name, values in stats.items():
        got = groups["sample_stats"][name]
        np.testing.assert_array_equal(got.reshape(values.shape), values)
        assert got.dtype == values.dtype, name
    # The chains end in the same state, so `sample` continues them alike (on
    # copies, which leave the fixtures' models where they are).
    a = cloudpickle.loads(cloudpickle.dumps(traced)).sample(
        num_samples=3, rng_key=jax.random.key(5)
    )
    b = cloudpickle.loads(cloudpickle.dumps(plain["model"])).sample(
        num_samples=3, rng_key=jax.random.key(5)
    )
    for group in ("posterior", "sample_stats"):
        for name, value in b[group].data_vars.items():
            np.testing.assert_array_equal(a[group][name].values, value.values)
    # sample_stats.diverging counts the divergences (the funnel has some).
    divergences = int(groups["sample_stats"]["diverging"].sum())
    assert divergences > 0
    assert divergences == int(stats["diverging"].sum())
    # tree_depth as ArviZ derives it from n_steps.
    n_steps = groups["sample_stats"]["n_steps"]
    np.testing.assert_array_equal(
        groups["sample_stats"]["tree_depth"], np.log2(n_steps).astype(int) + 1
    )


def test_sample_returns_sample_stats(plain: dict[str, Any]) -> None:
    # Without a trace, `sample` returns the sample statistics too.
    more = plain["model"].sample(num_samples=7, rng_key=jax.random.key(1))
    assert set(more.children) == {"posterior", "sample_stats"}
    assert more["posterior"]["beta"].shape == (case.NUM_CHAINS, 7, 2)
    assert set(more["sample_stats"].data_vars) == STATS
    assert more["sample_stats"]["lp"].shape == (case.NUM_CHAINS, 7)


_PARALLEL = """
import jax, numpy as np
from inference import trace_case as case
import dopax
assert jax.device_count() == 2, jax.devices()
X, y = case.data()
trace = case.new_trace(None)
model = case.fit(trace, mcmc=case.make_mcmc(chain_method="parallel"))
assert trace.status == "complete"
mcmc = case.make_mcmc(chain_method="parallel")
mcmc.run(jax.random.key(case.KEY_SEED), X=jax.numpy.asarray(X), y=jax.numpy.asarray(y))
for site, draws in mcmc.get_samples().items():
    assert np.array_equal(model.posterior[site], np.asarray(draws)), site
print("same")
"""


def test_parallel_chains_equal_numpyro_parallel() -> None:
    """With a device per chain, chains run on their own device, as in MCMC.run."""
    tests = Path(__file__).resolve().parents[1]
    src = Path(dopax.__file__).resolve().parents[1]
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "2", "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join([str(src), str(tests)])
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(
        [sys.executable, "-c", _PARALLEL], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip() == "same"


@pytest.fixture(scope="module")
def extended() -> dict[str, Any]:
    """A run of 40 fewer draws with `draws_per_chunk=100`, then extended by 40."""
    # Written through an fsspec URL (fsspec's in-memory file system).
    url = "memory://dopax-trace-test/short.zarr"
    short = case.NUM_SAMPLES - 40
    trace = case.new_trace(url, dpc=100)
    assert trace.status == "empty"
    case.fit(trace, mcmc=case.make_mcmc(num_samples=short))
    out: dict[str, Any] = {"status_short": trace.status, "short": case.draw_groups(trace)}
    trace = dopax.ZarrTrace.open(url).extend(40)
    out.update(status_extended=trace.status, num_samples=trace.num_samples)
    model = case.fit(trace, mcmc=case.make_mcmc(num_samples=short))
    out.update(status=dopax.ZarrTrace.open(url).status, groups=case.draw_groups(trace), model=model)
    return out


def test_draws_do_not_depend_on_draws_per_chunk(
    reference_trace: dict[str, Any], extended: dict[str, Any]
) -> None:
    # draws_per_chunk 100 here, 25 in the reference: the same draws.
    assert reference_trace["trace"].draws_per_chunk == 25
    short = case.NUM_SAMPLES - 40
    assert extended["short"].keys() == reference_trace["groups"].keys()
    for group, variables in extended["short"].items():
        for name, values in variables.items():
            ref = reference_trace["groups"][group][name]
            if not group.startswith("warmup"):
                ref = ref[:, :short]
            np.testing.assert_array_equal(values, ref, err_msg=f"{group}/{name}")


def test_extend_continues_the_chains(
    reference_trace: dict[str, Any], extended: dict[str, Any]
) -> None:
    assert extended["status_short"] == "complete"
    assert extended["status_extended"] == "interrupted"
    assert extended["num_samples"] == case.NUM_SAMPLES
    assert extended["status"] == "complete"
    # The same draws as a run with 40 more `num_samples`.
    case.assert_same_groups(extended["groups"], reference_trace["groups"])
    posterior = extended["model"].posterior
    assert posterior["alpha"].shape == (case.NUM_CHAINS * case.NUM_SAMPLES,)


def test_posterior_agrees_with_numpyro_within_monte_carlo_error(
    reference_trace: dict[str, Any], plain: dict[str, Any]
) -> None:
    # An independent NumPyro run (another key): for every scalar component of
    # the regression, |mean difference| < 4 * MCSE of the difference, and the
    # same for the sd, with each run's MCSE from its ESS (ArviZ's mcse, mean
    # and sd methods). The funnel's MCSE is not to be trusted, so it is left out.
    numpyro_post = az.from_dict(posterior=plain["independent"]).posterior
    traced = reference_trace["trace"].to_datatree()["posterior"].to_dataset().load()
    for method, reduce in (("mean", "mean"), ("sd", "std")):
        a = getattr(traced, reduce)(("chain", "draw"))
        b = getattr(numpyro_post, reduce)(("chain", "draw"))
        se = np.sqrt(
            az.mcse(traced, method=method) ** 2 + az.mcse(numpyro_post, method=method) ** 2
        )
        for site in ("alpha", "beta", "sigma"):
            diff = np.abs(np.asarray(a[site]) - np.asarray(b[site]))
            assert np.all(diff < 4 * np.asarray(se[site])), (method, site, diff, se[site])


# ---------------------------------------------------------------------------- layout and readers
def test_layout_attrs_and_status(reference_trace: dict[str, Any]) -> None:
    trace = dopax.ZarrTrace.open(reference_trace["path"])
    assert trace.status == "complete"
    assert trace.draws_done == (case.NUM_SAMPLES,) * case.NUM_CHAINS
    assert trace.iterations_done == (case.NUM_WARMUP + case.NUM_SAMPLES,) * case.NUM_CHAINS
    assert trace.draws_per_chunk == 25
    tree = trace.to_datatree()
    assert set(tree.children) == {
        "posterior",
        "sample_stats",
        "unconstrained_posterior",
        "warmup_posterior",
        "warmup_sample_stats",
        "warmup_unconstrained_posterior",
        "observed_data",
        "constant_data",
    }
    post = tree["posterior"]
    assert post["beta"].dims == ("chain", "draw", "beta_dim_0")
    assert post["beta"].chunks == ((1, 1), (25,) * 4, (2,))
    np.testing.assert_array_equal(post["draw"].values, np.arange(case.NUM_SAMPLES))
    np.testing.assert_array_equal(post["chain"].values, np.arange(case.NUM_CHAINS))
    assert set(tree["sample_stats"].data_vars) == STATS
    assert tree["warmup_posterior"].sizes["draw"] == case.NUM_WARMUP
    X, y = case.data()
    np.testing.assert_array_equal(tree["observed_data"]["y"].values, y)
    np.testing.assert_array_equal(tree["constant_data"]["X"].values, X)
    assert set(tree["constant_data"].data_vars) == {"X"}
    attrs = tree.attrs
    assert attrs["creation_library"] == "dopax"
    assert attrs["creation_library_version"] == dopax.__version__
    assert attrs["inference_library"] == "numpyro"
    assert attrs["inference_library_version"] == numpyro.__version__
    assert attrs["dopax_version"] == dopax.__version__
    assert "created_at" in attrs
    # The unconstrained sigma is its log.
    np.testing.assert_allclose(
        np.exp(tree["unconstrained_posterior"]["sigma"].values),
        post["sigma"].values,
        rtol=1e-5,
    )
    # The model's posterior is the trace's, chain-major.
    model = reference_trace["model"]
    np.testing.assert_array_equal(model.posterior["beta"], post["beta"].values.reshape(-1, 2))


def test_xarray_reads_trace_without_dopax(reference_trace: dict[str, Any]) -> None:
    code = (
        "import sys, xarray as xr\n"
        "tree = xr.open_datatree(sys.argv[1], engine='zarr')\n"
        "assert 'dopax' not in sys.modules, 'dopax was imported'\n"
        "print(sorted(tree.children))\n"
        "print(float(tree['posterior']['alpha'].values[1, -1]))\n"
        "print(int(tree['sample_stats']['diverging'].sum()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", code, str(reference_trace["path"])],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    groups, alpha, divergences = proc.stdout.strip().splitlines()
    assert "_sampling_state" in groups and "posterior" in groups
    post = reference_trace["groups"]["posterior"]
    assert float(alpha) == float(post["alpha"][1, -1])
    assert int(divergences) == int(reference_trace["groups"]["sample_stats"]["diverging"].sum())


def test_arviz_statistics_and_plots(reference_trace: dict[str, Any]) -> None:
    # ArviZ 0.23 takes InferenceData (`az.from_datatree`) and computes on
    # loaded arrays, not on the trace's dask arrays.
    import matplotlib.pyplot as plt

    tree = dopax.ZarrTrace.open(reference_trace["path"]).to_datatree()
    idata = az.from_datatree(tree.load())
    summary = az.summary(idata, var_names=["alpha", "beta", "sigma"])
    assert list(summary.index) == ["alpha", "beta[0]", "beta[1]", "sigma"]
    assert set(az.summary(idata).index) >= {"v", "z"}
    assert np.all(summary["r_hat"] < 1.1)
    assert float(az.rhat(idata)["alpha"]) < 1.1
    assert float(az.ess(idata)["alpha"]) > 20
    with warnings.catch_warnings():
        # arviz 0.23's trace plot calls a matplotlib 3.11 API it deprecates.
        warnings.simplefilter("ignore", matplotlib.MatplotlibDeprecationWarning)
        axes = az.plot_trace(idata, var_names=["alpha", "sigma"])
    assert axes.shape == (2, 2)
    plt.close("all")
    assert int(idata.sample_stats["diverging"].sum()) == int(
        reference_trace["groups"]["sample_stats"]["diverging"].sum()
    )


# ---------------------------------------------------------------------------- mismatches
def other_kernel(X: Any, y: Any = None) -> None:
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 2.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    scale = numpyro.sample("scale", dist.HalfNormal(1.0))
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(alpha + X @ beta, scale), obs=y)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("data", "data 'y'"),
        ("kernel", "kernel 'sites'"),
        ("num_warmup", "sampler 'num_warmup'"),
        ("target_accept_prob", "sampler 'target_accept_prob'"),
        ("chain_method", "sampler 'chain_method'"),
    ],
)
def test_mismatch_raises_and_leaves_trace_unchanged(
    reference_trace: dict[str, Any], tmp_path: Path, change: str, named: str
) -> None:
    path = tmp_path / "copy.zarr"
    shutil.copytree(reference_trace["path"], path)
    before = case.folder_digest(path)
    trace = dopax.ZarrTrace.open(path)
    X, y = case.data()
    kernel: Any = case.kernel
    mcmc = case.make_mcmc()
    if change == "data":
        y = y + 1.0
    elif change == "kernel":
        kernel = other_kernel
        mcmc = MCMC(
            NUTS(other_kernel),
            num_warmup=case.NUM_WARMUP,
            num_samples=case.NUM_SAMPLES,
            num_chains=case.NUM_CHAINS,
            chain_method="sequential",
            progress_bar=False,
        )
    elif change == "num_warmup":
        mcmc = case.make_mcmc(num_warmup=case.NUM_WARMUP + 1)
    elif change == "target_accept_prob":
        mcmc = MCMC(
            NUTS(case.kernel, target_accept_prob=0.9),
            num_warmup=case.NUM_WARMUP,
            num_samples=case.NUM_SAMPLES,
            num_chains=case.NUM_CHAINS,
            chain_method="sequential",
            progress_bar=False,
        )
    else:
        mcmc = case.make_mcmc(chain_method="vectorized")
    model = dopax.ImpactModel(kernel, jax.random.key(0), mcmc)
    with pytest.raises(TraceMismatchError, match=named):
        model.fit_on_batch(X, y, trace=trace, progress=False)
    assert case.folder_digest(path) == before
    assert trace.status == "complete"


# ---------------------------------------------------------------------------- stores and errors
def test_argument_errors(reference_trace: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(FileExistsError, match=r"ZarrTrace\.open"):
        dopax.ZarrTrace(reference_trace["path"])
    with pytest.raises(FileNotFoundError):
        dopax.ZarrTrace.open(tmp_path / "nothing.zarr")
    with pytest.raises(ValueError, match="draws_per_chunk"):
        dopax.ZarrTrace(None, draws_per_chunk=0)
    with pytest.raises(ValueError, match="storage_options"):
        dopax.ZarrTrace(tmp_path / "x.zarr", storage_options={"anon": True})
    with pytest.raises(ValueError):
        dopax.ZarrTrace("nosuchscheme://bucket/trace.zarr")
    empty = dopax.ZarrTrace(tmp_path / "empty.zarr")
    assert empty.status == "empty"
    assert empty.draws_done == ()
    with pytest.raises(FileNotFoundError):
        empty.to_datatree()
    X, y = case.data()
    svi = SVI(case.kernel, AutoNormal(case.kernel), Adam(1e-2), Trace_ELBO())
    model = dopax.ImpactModel(case.kernel, jax.random.key(0), svi)
    with pytest.raises(TypeError, match="MCMC"):
        model.fit_on_batch(X, y, trace=empty, progress=False)
    thinned = dopax.ImpactModel(case.kernel, jax.random.key(0), case.make_mcmc(thinning=2))
    with pytest.raises(ValueError, match="thinning"):
        thinned.fit_on_batch(X, y, trace=empty, progress=False)
    assert not (tmp_path / "empty.zarr").exists()
