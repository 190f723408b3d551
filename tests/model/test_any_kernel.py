"""Every kernel gives NumPyro's answer: ``numpyro.param`` sites, many threads, aimz's workflows."""

from __future__ import annotations

import threading
import warnings
from typing import Any

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from numpyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.infer.util import log_likelihood as numpyro_log_likelihood
from numpyro.optim import Adam

import dopax
from dopax import ImpactModel
from dopax.data import ArrayDataset, ArrayLoader
from dopax.exceptions import NotFittedError

N = 40


def with_param(X: Any, y: Any = None) -> None:
    """A linear model whose intercept is a point estimate (``numpyro.param``)."""
    b0 = numpyro.param("b0", 0.0)
    scale = numpyro.param("scale", 0.5, constraint=dist.constraints.positive)
    b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("obs", X.shape[0]):
        mu = numpyro.deterministic("mu", b0 + X @ b)
        numpyro.sample("y", dist.Normal(mu, scale), obs=y)


def linear(X: Any, y: Any = None) -> None:
    a = numpyro.sample("a", dist.Normal(0.0, 5.0))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("obs", X.shape[0]):
        mu = numpyro.deterministic("mu", a + X @ b)
        numpyro.sample("y", dist.Normal(mu, 0.5), obs=y)


def _svi(kernel: Any) -> SVI:
    return SVI(kernel, AutoNormal(kernel), Adam(0.05), Trace_ELBO())


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, 2)).astype(np.float32)
    y = (3.0 + X @ np.array([0.5, -0.3]) + 0.3 * rng.normal(size=N)).astype(np.float32)
    return X, y


@pytest.fixture(scope="module")
def param_model(data: Any) -> ImpactModel:
    X, y = data
    model = ImpactModel(with_param, jax.random.key(0), _svi(with_param))
    return model.fit_on_batch(X, y, num_steps=600, num_samples=30, progress=False)


def _reference(model: ImpactModel, X: np.ndarray) -> dict[str, np.ndarray]:
    """NumPyro's ``Predictive`` on the model's own latent draws, with the SVI params."""
    predictive = Predictive(
        with_param, posterior_samples=model.posterior, params=model.vi_result.params
    )
    return {k: np.asarray(v) for k, v in predictive(jax.random.key(1), X).items()}


# ------------------------------------------------------------------ numpyro.param sites
def test_param_sites_take_their_fitted_values(param_model: ImpactModel, data: Any, tmp_path):
    X, y = data
    fitted = float(param_model.vi_result.params["b0"])
    assert abs(fitted - 3.0) < 0.3  # the fit moved it from its initial 0.0
    ref = _reference(param_model, X)["mu"]
    assert abs(float(ref.mean()) - float(y.mean())) < 0.3

    key = jax.random.key(7)
    on_batch = param_model.predict_on_batch(X, rng_key=key, return_datatree=False)
    np.testing.assert_allclose(on_batch["mu"], ref, rtol=1e-5, atol=1e-5)
    streamed = param_model.predict(
        X, rng_key=key, batch_size=16, output_dir=tmp_path, progress=False
    )
    mu = streamed.posterior_predictive["mu"].values.reshape(ref.shape)
    np.testing.assert_allclose(mu, ref, rtol=1e-5, atol=1e-5)
    # the observation noise uses the fitted scale: y's spread about mu is about it
    noise = on_batch["y"] - on_batch["mu"]
    scale = float(param_model.vi_result.params["scale"])
    assert 0.8 * scale < float(noise.std()) < 1.2 * scale


def test_log_likelihood_and_scenarios_use_the_fitted_params(param_model: ImpactModel, data: Any):
    X, y = data
    params = param_model.vi_result.params
    ref = numpyro_log_likelihood(
        handlers.substitute(with_param, data=params), param_model.posterior, X, y
    )["y"]
    tree = param_model.log_likelihood(X, y, batch_size=16, store="memory", progress=False)
    got = tree.log_likelihood["y"].values.reshape(np.shape(ref))
    np.testing.assert_allclose(got, np.asarray(ref), rtol=1e-5, atol=1e-4)

    effect = param_model.compare_scenarios(
        X,
        {"base": {}, "shifted": {"X": X + 1.0}},
        baseline="base",
        site="mu",
        store="memory",
        progress=False,
    )
    means = effect.tree["draws"]["mean"].values.reshape(-1, 2)
    np.testing.assert_allclose(means[:, 0], _reference(param_model, X)["mu"].mean(-1), rtol=1e-5)
    np.testing.assert_allclose(
        means[:, 1], _reference(param_model, X + 1.0)["mu"].mean(-1), rtol=1e-5
    )


def test_params_survive_save_and_load(param_model: ImpactModel, data: Any, tmp_path):
    X, _ = data
    # data only: the kernel and the inference object come from the caller
    path = dopax.save_model(param_model, tmp_path / "m")
    loaded = dopax.load_model(path, kernel=with_param, inference=_svi(with_param))
    assert loaded.kernel_spec is not None
    assert loaded.kernel_spec.param_sites == ("b0", "scale")
    key = jax.random.key(3)
    got = loaded.predict_on_batch(X, rng_key=key, return_datatree=False)["mu"]
    np.testing.assert_allclose(got, _reference(param_model, X)["mu"], rtol=1e-5, atol=1e-5)


def test_prior_calls_use_the_initial_values(param_model: ImpactModel, data: Any) -> None:
    X, _ = data
    prior = param_model.sample_prior_predictive_on_batch(
        X, num_samples=20, return_sites=["b", "mu"], return_datatree=False
    )
    # as NumPyro's Predictive without `params`: b0 keeps its initial 0.0
    np.testing.assert_allclose(prior["mu"], prior["b"] @ X.T, rtol=1e-5, atol=1e-5)
    reference = Predictive(with_param, num_samples=20)(jax.random.key(0), X)
    np.testing.assert_allclose(
        np.asarray(reference["mu"]), np.asarray(reference["b"]) @ X.T, rtol=1e-5, atol=1e-5
    )


def test_set_posterior_sample_keeps_the_fitted_params(param_model: ImpactModel, data: Any):
    X, _ = data
    model = ImpactModel(with_param, jax.random.key(0), _svi(with_param))
    model.vi_result = param_model.vi_result
    model.set_posterior_sample(param_model.posterior)
    got = model.predict_on_batch(X, rng_key=jax.random.key(4), return_datatree=False)["mu"]
    np.testing.assert_allclose(got, _reference(param_model, X)["mu"], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ many threads
def _calls(model: ImpactModel, X: np.ndarray, y: np.ndarray, out: Any) -> dict[str, Any]:
    key = jax.random.key(5)
    on_batch = model.predict_on_batch(X, rng_key=key, return_datatree=False)
    streamed = model.predict(X, rng_key=key, batch_size=8, output_dir=out, progress=False)
    ll = model.log_likelihood(X, y, batch_size=8, output_dir=out, progress=False)
    effect = model.compare_scenarios(
        X, {"a": {}, "b": {"X": X + 1.0}}, baseline="a", site="mu", rng_key=key, progress=False
    )
    return {
        "on_batch": on_batch["y"],
        "predict": streamed.posterior_predictive["y"].values,
        "log_likelihood": ll.log_likelihood["y"].values,
        "scenarios": effect.tree["draws"]["mean"].values,
    }


def test_many_threads_get_the_sequential_answers(data: Any, tmp_path) -> None:
    X, y = data
    model = ImpactModel(linear, jax.random.key(0), _svi(linear))
    model.fit_on_batch(X, y, num_steps=200, num_samples=20, progress=False)
    # every thread its own row count: eight cold first calls trace at once
    sizes = [12 + 3 * i for i in range(8)]
    results: dict[int, list[dict[str, Any]]] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            n = sizes[i]
            results[i] = [_calls(model, X[:n], y[:n], tmp_path / f"t{i}") for _ in range(3)]
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for i, n in enumerate(sizes):
        expected = _calls(model, X[:n], y[:n], tmp_path / f"s{i}")
        for got in results[i]:
            for name, value in expected.items():
                np.testing.assert_array_equal(got[name], value, err_msg=f"{name}, {n} rows")


# ------------------------------------------------------------------ aimz's workflows
def dual(X: Any, y: Any = None) -> None:
    """``y`` is a deterministic site when unobserved, a sample site when observed."""
    b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    mu = X @ b
    if y is None:
        numpyro.deterministic("y", mu)
    else:
        with numpyro.plate("obs", X.shape[0]):
            numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def test_a_deterministic_output_branch(data: Any) -> None:
    X, y = data
    model = ImpactModel(dual, jax.random.key(0), _svi(dual))
    prior = model.sample_prior_predictive_on_batch(X, num_samples=5, return_datatree=False)
    assert prior["y"].shape == (5, N)
    model.fit_on_batch(X, y, num_steps=50, num_samples=5, progress=False)
    assert model.kernel_spec is not None
    assert model.kernel_spec.return_sites.count("y") == 1
    out = model.predict_on_batch(X, return_sites=["y"], return_datatree=False)
    np.testing.assert_allclose(out["y"], model.posterior["b"] @ X.T, rtol=1e-5, atol=1e-5)


def test_vi_result_set_by_hand_drives_sample_and_predict(data: Any) -> None:
    X, y = data
    svi = _svi(linear)
    result = svi.run(jax.random.key(2), 300, X, y, progress_bar=False)
    model = ImpactModel(linear, jax.random.key(0), svi)
    model.vi_result = result
    draws = model.sample(num_samples=50, return_datatree=False)
    assert set(draws) == {"a", "b"}
    assert abs(float(np.mean(draws["a"])) - float(result.params["a_auto_loc"])) < 0.2
    # predict draws from that result's guide without a further step
    out = model.predict_on_batch(X, return_datatree=False)
    assert abs(float(out["mu"].mean()) - float(y.mean())) < 0.3
    model.set_posterior_sample(draws)
    assert model.posterior is not None and model.posterior["a"].shape == (50,)


def test_vi_result_needs_params() -> None:
    model = ImpactModel(linear, jax.random.key(0), _svi(linear))
    with pytest.raises(TypeError, match="params"):
        model.vi_result = {"losses": [1.0]}
    with pytest.raises(NotFittedError, match="vi_result"):
        model.sample(num_samples=3)


def local_latent(X: Any, y: Any = None) -> None:
    a = numpyro.sample("a", dist.Normal(0.0, 1.0))
    with numpyro.plate("obs", X.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(a + X[:, 0] + 0.1 * z, 1.0), obs=y)


def test_per_row_latents_are_not_warned_about_on_either_shard_axis(data: Any) -> None:
    X, y = data
    model = ImpactModel(local_latent, jax.random.key(0), _svi(local_latent))
    model.fit_on_batch(X, y, num_steps=20, num_samples=4, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        by_draw = model.predict(X, shard_axis="draw", store="memory", progress=False)
        by_row = model.predict(X, store="memory", progress=False)
    assert by_row.attrs["path"] == "rows"
    assert by_draw["posterior_predictive"]["y"].shape == by_row["posterior_predictive"]["y"].shape


def with_t(X: Any, t: Any, y: Any = None) -> None:
    a = numpyro.sample("a", dist.Normal(0.0, 1.0))
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(a + X[:, 0] + t, 1.0), obs=y)


def test_a_keyword_named_like_a_loader_field_is_an_error(data: Any) -> None:
    X, y = data
    t = np.zeros(N, np.float32)
    model = ImpactModel(with_t, jax.random.key(0), _svi(with_t))
    model.fit_on_batch(X, y, t=t, num_steps=20, num_samples=4, progress=False)
    loader = ArrayLoader(ArrayDataset(X=X, t=t), jax.random.key(1), batch_size=N)
    with pytest.raises(ValueError, match=r"\['t'\].*ArrayLoader"):
        model.predict_on_batch(loader, t=np.ones(N, np.float32))
    assert model.predict_on_batch(loader, return_datatree=False)["y"].shape == (4, N)


def test_mcmc_sample_uses_the_data_it_is_given(data: Any) -> None:
    X, y = data
    mcmc = MCMC(NUTS(linear), num_warmup=150, num_samples=100, progress_bar=False)
    model = ImpactModel(linear, jax.random.key(0), mcmc)
    model.fit_on_batch(X, y, progress=False)
    fit_a = float(np.mean(model.posterior["a"]))
    assert abs(fit_a - 3.0) < 0.5
    shifted = model.sample(X=X, y=y + 5.0, num_samples=100, return_datatree=False)
    assert shifted["a"].shape == (100,)
    assert abs(float(np.mean(shifted["a"])) - (fit_a + 5.0)) < 0.5
    # the model's own posterior is not replaced
    assert abs(float(np.mean(model.posterior["a"])) - fit_a) < 1e-6
    with pytest.raises(ValueError, match="both the input and the output"):
        model.sample(X=X)


def test_a_scalar_scenario_value_for_the_input_itself() -> None:
    treat = np.random.default_rng(1).integers(0, 2, size=N).astype(np.float32)

    def kernel(X: Any, y: Any = None) -> None:
        tau = numpyro.sample("tau", dist.Normal(0.0, 5.0))
        with numpyro.plate("obs", X.shape[0]):
            numpyro.sample("y", dist.Normal(1.0 + tau * X, 0.5), obs=y)

    yt = (1.0 + 2.0 * treat + 0.5 * np.random.default_rng(2).normal(size=N)).astype(np.float32)
    model = ImpactModel(kernel, jax.random.key(0), _svi(kernel))
    model.fit_on_batch(treat, yt, num_steps=400, num_samples=30, progress=False)
    effect = model.compare_scenarios(
        treat,
        {"treated": {"X": 1.0}, "control": {"X": 0.0}},
        baseline="control",
        store="memory",
        progress=False,
    )
    (ate,) = effect.ate_draws().values()
    # shared random numbers: the noise cancels and each draw's effect is its tau
    np.testing.assert_allclose(ate, np.asarray(model.posterior["tau"]), rtol=1e-4, atol=1e-5)
