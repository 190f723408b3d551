"""Behaviours an aimz user relies on, and the errors a new user meets first."""

from __future__ import annotations

import warnings
from typing import Any

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import xarray as xr
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.optim import Adam

from dopax import ImpactModel
from dopax.exceptions import FitDivergedError, KernelValidationError

N = 24


def branchy(X: Any, y: Any = None, extra: bool = False) -> None:
    """Sites differ by branch: ``fit_only`` with data, ``sim_only`` without."""
    a = numpyro.sample("a", dist.Normal(0.0, 1.0))
    mu = a + X[:, 0]
    if y is None:
        numpyro.deterministic("sim_only", 2.0 * mu)
    else:
        numpyro.deterministic("fit_only", y - mu)
    if extra:
        numpyro.deterministic("extra_site", 3.0 * mu)
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def linear(X: Any, y: Any = None) -> None:
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]))
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(X @ beta, 1.0), obs=y)


def make(kernel: Any, lr: float = 0.05) -> ImpactModel:
    return ImpactModel(
        kernel, jax.random.key(0), SVI(kernel, AutoNormal(kernel), Adam(lr), Trace_ELBO())
    )


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, 2)).astype(np.float32)
    y = (X[:, 0] + 0.1 * rng.normal(size=N)).astype(np.float32)
    return X, y


# ------------------------------------------------------------------ branches on `y is None`
def test_branches_on_the_output(data: Any) -> None:
    X, y = data
    model = make(branchy)
    prior = model.sample_prior_predictive_on_batch(X, num_samples=4)
    assert set(prior["prior_predictive"].data_vars) == {"y", "sim_only"}
    model.fit_on_batch(X, y, num_steps=5, num_samples=4, progress=False)
    spec = model.kernel_spec
    assert spec is not None and {"fit_only", "sim_only"} <= set(spec.return_sites)
    # default sites: those of the sampling branch, on every path
    assert set(model.predict_on_batch(X)["posterior_predictive"].data_vars) == {"y", "sim_only"}
    streamed = model.predict(X, progress=False, store="memory")
    assert set(streamed["posterior_predictive"].data_vars) == {"y", "sim_only"}
    # a site no trace has shown yet: a warning, then it is looked for in the call's branch
    with pytest.warns(UserWarning, match=r"\['extra_site'\] were not seen"):
        out = model.predict_on_batch(X, return_sites=["y", "extra_site"], extra=True)
    assert set(out["posterior_predictive"].data_vars) == {"y", "extra_site"}
    with pytest.warns(UserWarning, match="not seen"), pytest.raises(KeyError, match="nope"):
        model.predict_on_batch(X, return_sites=["nope"])


def test_fit_first_then_prior(data: Any) -> None:
    X, y = data
    model = make(branchy)
    model.fit_on_batch(X, y, num_steps=5, num_samples=4, progress=False)
    prior = model.sample_prior_predictive_on_batch(X, num_samples=4)
    assert set(prior["prior_predictive"].data_vars) == {"y", "sim_only"}


def test_kernel_without_the_output_when_sampling(data: Any) -> None:
    def observed_only(X: Any, y: Any = None) -> None:
        a = numpyro.sample("a", dist.Normal(0.0, 1.0))
        if y is not None:
            with numpyro.plate("obs", X.shape[0]):
                numpyro.sample("y", dist.Normal(a + X[:, 0], 1.0), obs=y)

    X, y = data
    model = make(observed_only)
    model.fit_on_batch(X, y, num_steps=5, num_samples=4, progress=False)
    with pytest.raises(KernelValidationError, match="no site 'y' when it runs without"):
        model.predict_on_batch(X)
    with pytest.raises(KernelValidationError, match="no site 'y' when it runs without"):
        model.predict(X, progress=False)


# ------------------------------------------------------------------ fits that fail
def test_diverging_fit_raises_and_keeps_the_state(data: Any) -> None:
    X, y = data
    model = make(linear, lr=1e4)
    with pytest.raises(FitDivergedError, match=r"NaN at step \d+ of the 30 steps.*learning rate"):
        model.fit_on_batch(X, y * 1e3, num_steps=30, num_samples=4, progress=False)
    assert not model.is_fitted()
    assert not np.isfinite(model.vi_result.losses).all()


def test_nonfinite_loss_with_finite_parameters_warns(data: Any) -> None:
    from dopax.inference.svi import check_losses

    with pytest.warns(RuntimeWarning, match="loss was infinite at step 3"):
        check_losses(np.array([1.0, 2.0, np.inf, 1.0]), {"loc": np.zeros(2)})


def test_kernel_without_latent_sites_says_so(data: Any) -> None:
    def no_latent(X: Any, y: Any = None) -> None:
        with numpyro.plate("obs", X.shape[0]):
            numpyro.sample("y", dist.Normal(X[:, 0], 1.0), obs=y)

    X, y = data
    with pytest.raises(KernelValidationError, match="no latent sample site"):
        make(no_latent).fit_on_batch(X, y, num_steps=5, progress=False)


# ------------------------------------------------------------------ estimate_effect
@pytest.fixture(scope="module")
def posterior_model(data: Any) -> ImpactModel:
    model = make(linear)
    rng = np.random.default_rng(1)
    model.set_posterior_sample({"beta": rng.normal(size=(6, 2)).astype(np.float32)})
    return model


@pytest.mark.parametrize("in_sample", [True, False])
def test_estimate_effect_on_batch_with_dict_sides(
    posterior_model: ImpactModel, data: Any, in_sample: bool
) -> None:
    X, _ = data
    key = jax.random.key(3)
    args = {"X": X, "return_datatree": False, "in_sample": in_sample, "rng_key": key}
    effect = posterior_model.estimate_effect(
        args_baseline=args, args_intervention={**args, "X": X + 1.0}, on_batch=True
    )
    group = "posterior_predictive" if in_sample else "predictions"
    assert list(effect.children) == [group]
    base = posterior_model.predict_on_batch(X, rng_key=key, in_sample=in_sample)
    treat = posterior_model.predict_on_batch(X + 1.0, rng_key=key, in_sample=in_sample)
    np.testing.assert_allclose(
        effect[group]["y"].values, treat[group]["y"].values - base[group]["y"].values, atol=1e-5
    )


def test_estimate_effect_records_where_the_sides_live(
    posterior_model: ImpactModel, data: Any, tmp_path: Any
) -> None:
    X, _ = data
    base = posterior_model.predict(X, output_dir=tmp_path, progress=False)
    treat = posterior_model.predict(X + 1.0, output_dir=tmp_path, progress=False)
    effect = posterior_model.estimate_effect(output_baseline=base, output_intervention=treat)
    assert effect.attrs["artifact_path_baseline"] == base.attrs["artifact_path"]
    assert effect.attrs["artifact_path_intervention"] == treat.attrs["artifact_path"]


# ------------------------------------------------------------------ store="memory"
def test_memory_store_is_chunked_like_the_persisted_result(
    posterior_model: ImpactModel, data: Any
) -> None:
    X, _ = data
    key = jax.random.key(4)
    memory = posterior_model.predict(X, rng_key=key, batch_size=10, store="memory", progress=False)
    disk = posterior_model.predict(X, rng_key=key, batch_size=10, progress=False)
    y_mem, y_disk = memory["posterior_predictive"]["y"], disk["posterior_predictive"]["y"]
    import dask.array as da

    assert isinstance(y_mem.data, da.Array)
    assert y_mem.chunks == y_disk.chunks == ((1,), (6,), (10, 10, 4))
    np.testing.assert_array_equal(y_mem.values, y_disk.values)
    with pytest.raises(ValueError, match="`output_dir` is given but `store='memory'`"):
        posterior_model.predict(X, store="memory", output_dir="somewhere", progress=False)


def test_log_likelihood_without_y_names_the_fix(posterior_model: ImpactModel, data: Any) -> None:
    X, _ = data
    with pytest.raises(ValueError, match=r"pass `y` with one entry per row of `X` \(24 rows\)"):
        posterior_model.log_likelihood(X, progress=False)


# ------------------------------------------------------------------ inference objects
def test_svi_for_another_kernel_is_refused() -> None:
    with pytest.raises(
        ValueError, match="built for the model 'branchy', not for `kernel` 'linear'"
    ):
        ImpactModel(
            linear, jax.random.key(0), SVI(branchy, AutoNormal(branchy), Adam(0.1), Trace_ELBO())
        )
    from numpyro.infer import MCMC, NUTS

    with pytest.raises(ValueError, match="built for the model"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # NumPyro's note on parallel chains
        ImpactModel(linear, jax.random.key(0), MCMC(NUTS(branchy), num_warmup=1, num_samples=1))
    # the kernel's own object, and a handler around it, are accepted
    ImpactModel(linear, jax.random.key(0), SVI(linear, AutoNormal(linear), Adam(0.1), Trace_ELBO()))
    scaled = numpyro.handlers.scale(linear, 2.0)
    ImpactModel(linear, jax.random.key(0), SVI(scaled, AutoNormal(scaled), Adam(0.1), Trace_ELBO()))


def test_return_datatree_false_keeps_dicts(posterior_model: ImpactModel, data: Any) -> None:
    X, _ = data
    out = posterior_model.predict_on_batch(X, return_datatree=False)
    assert isinstance(out, dict) and out["y"].shape == (6, N)
    assert not isinstance(out, xr.DataTree)
