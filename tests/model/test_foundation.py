"""Foundation tests of :class:`dopax.ImpactModel`: construction, tracing, fitting, sampling."""

from __future__ import annotations

import copy
import inspect
import itertools
from collections.abc import Callable
from typing import Any

import arviz as az
import cloudpickle
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import xarray as xr
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.optim import Adam

from dopax import ImpactModel, KernelSpec
from dopax.data import ArrayDataset, ArrayLoader
from dopax.exceptions import KernelValidationError, NotFittedError, ScenarioError

ALPHA = 1.5
BETA = np.array([2.0, -1.0, 0.5], dtype=np.float32)
SIGMA = 0.5
N = 1000


# ---------------------------------------------------------------------------- kernels
def linreg(X: Any, y: Any = None) -> None:
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 5.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 5.0).expand([3]).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    mu = numpyro.deterministic("mu", alpha + X @ beta)
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def local_kernel(X: Any, y: Any = None) -> None:
    """A kernel with a per-row latent ``z`` (sample site inside the row plate, no obs)."""
    m = numpyro.sample("m", dist.Normal(0.0, 1.0))
    with numpyro.plate("obs", X.shape[0]):
        z = numpyro.sample("z", dist.Normal(m, 1.0))
        numpyro.sample("y", dist.Normal(z + X[:, 0], 0.1), obs=y)


def counting_linreg(counter: list[int]) -> Callable[..., None]:
    """Return a linear-regression kernel that counts Python-side calls (traces)."""

    def kernel(X: Any, y: Any = None) -> None:
        counter.append(1)
        linreg(X, y)

    return kernel


def make_svi(kernel: Callable[..., Any], lr: float = 1e-2) -> SVI:
    return SVI(kernel, AutoNormal(kernel), Adam(lr), Trace_ELBO())


def make_model(kernel: Callable[..., Any] = linreg, seed: int = 0, **kw: Any) -> ImpactModel:
    return ImpactModel(kernel, jax.random.key(seed), make_svi(kernel), **kw)


def simulate(n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)).astype(np.float32)
    y = (ALPHA + X @ BETA + SIGMA * rng.normal(size=n)).astype(np.float32)
    return X, y


def key_data(key: jax.Array) -> np.ndarray:
    return np.asarray(jax.random.key_data(key))


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return simulate()


@pytest.fixture(scope="module")
def small() -> tuple[np.ndarray, np.ndarray]:
    return simulate(n=20, seed=1)


@pytest.fixture(scope="module")
def fitted(small: tuple[np.ndarray, np.ndarray]) -> ImpactModel:
    """A quickly fitted SVI model on 20 rows (used where the fit quality does not matter)."""
    X, y = small
    model = make_model()
    model.fit_on_batch(X, y, num_steps=300, num_samples=40, progress=False)
    return model


def assert_recovers(model: ImpactModel) -> None:
    post = model.posterior
    assert post is not None
    # Tolerance 0.1: with n=1000 and sigma=0.5 the posterior sd of alpha and
    # each beta is about 0.016, so 0.1 is > 6 sd and only fails on a wrong fit.
    assert abs(float(np.mean(post["alpha"])) - ALPHA) < 0.1
    np.testing.assert_allclose(np.mean(post["beta"], axis=0), BETA, atol=0.1)


# ---------------------------------------------------------------------------- 1. constructor
class TestConstructor:
    def test_var_positional_rejected(self) -> None:
        def kernel(X: Any, *args: Any, y: Any = None) -> None: ...

        with pytest.raises(KernelValidationError, match=r"\*args"):
            make_model(kernel)

    def test_var_keyword_rejected(self) -> None:
        def kernel(X: Any, y: Any = None, **kwargs: Any) -> None: ...

        with pytest.raises(KernelValidationError, match=r"\*\*kwargs"):
            make_model(kernel)

    def test_missing_input_output(self) -> None:
        def kernel(data: Any, target: Any = None) -> None: ...

        with pytest.raises(KernelValidationError) as info:
            make_model(kernel)
        assert "Kernel must accept 'X' and 'y' as argument(s)" in str(info.value)
        assert "param_input" in str(info.value)

    def test_input_with_default(self) -> None:
        def kernel(X: Any = None, y: Any = None) -> None: ...

        with pytest.raises(KernelValidationError, match=r"'X'.*default"):
            make_model(kernel)

    def test_output_default_not_none(self) -> None:
        def kernel(X: Any, y: Any = 0.0) -> None: ...

        with pytest.raises(KernelValidationError, match=r"'y'.*default to None"):
            make_model(kernel)

    def test_custom_param_names(self, small: tuple[np.ndarray, np.ndarray]) -> None:
        def kernel(features: Any, target: Any = None) -> None:
            linreg_named(features, target)

        def linreg_named(features: Any, target: Any) -> None:
            alpha = numpyro.sample("alpha", dist.Normal(0.0, 5.0))
            with numpyro.plate("obs", features.shape[0]):
                numpyro.sample("target", dist.Normal(alpha + features[:, 0], 1.0), obs=target)

        with pytest.raises(KernelValidationError, match="'X' and 'y'"):
            make_model(kernel)
        model = make_model(kernel, param_input="features", param_output="target")
        assert model.param_input == "features"
        assert model.param_output == "target"
        X, y = small
        model.fit_on_batch(X, y, num_steps=50, num_samples=10, progress=False)
        out = model.predict_on_batch(X, return_datatree=False)
        assert isinstance(out, dict)
        assert out["target"].shape == (10, 20)

    def test_legacy_uint32_key(self, small: tuple[np.ndarray, np.ndarray]) -> None:
        legacy = jax.random.PRNGKey(3)
        with pytest.warns(UserWarning, match="legacy uint32"):
            model = ImpactModel(linreg, legacy, make_svi(linreg))
        assert jnp.issubdtype(model.rng_key.dtype, jax.dtypes.prng_key)
        np.testing.assert_array_equal(key_data(model.rng_key), np.asarray(legacy))
        X, y = small
        model.fit_on_batch(X, y, num_steps=20, num_samples=5, progress=False)
        assert model.is_fitted()

    def test_svi_keyword_deprecated(self) -> None:
        svi = make_svi(linreg)
        with pytest.warns(DeprecationWarning, match="svi"):
            model = ImpactModel(linreg, jax.random.key(0), svi=svi)
        assert model.inference is svi

    @pytest.mark.parametrize("bad", [None, "svi", object(), 3])
    def test_inference_type(self, bad: Any) -> None:
        with pytest.raises(TypeError, match=r"numpyro\.infer\.SVI"):
            ImpactModel(linreg, jax.random.key(0), bad)

    def test_not_fitted_error_hierarchy(self) -> None:
        assert issubclass(NotFittedError, ValueError)
        assert issubclass(NotFittedError, AttributeError)
        model = make_model()
        assert not model.is_fitted()
        assert model.posterior is None
        with pytest.raises(ValueError):
            model.predict_on_batch(np.zeros((2, 3), np.float32))
        with pytest.raises(AttributeError):
            model.predict_on_batch(np.zeros((2, 3), np.float32))

    def test_constructor_does_not_trace(self) -> None:
        counter: list[int] = []
        kernel = counting_linreg(counter)
        model = make_model(kernel)
        assert model.kernel_spec is None
        assert counter == []
        assert model.temp_dir is None
        assert "ImpactModel" in str(model)
        assert "\n" not in repr(model)


# ---------------------------------------------------------------------------- 2. first trace
class TestFirstTrace:
    def test_slash_in_site_name(self, small: tuple[np.ndarray, np.ndarray]) -> None:
        def kernel(X: Any, y: Any = None) -> None:
            a = numpyro.sample("a/b", dist.Normal(0.0, 1.0))
            with numpyro.plate("obs", X.shape[0]):
                numpyro.sample("y", dist.Normal(a, 1.0), obs=y)

        with pytest.raises(KernelValidationError, match="'/'") as info:
            make_model(kernel).fit_on_batch(*small, num_steps=1, num_samples=1, progress=False)
        assert "a/b" in str(info.value)

    def test_missing_output_site(self, small: tuple[np.ndarray, np.ndarray]) -> None:
        def kernel(X: Any, y: Any = None) -> None:
            a = numpyro.sample("a", dist.Normal(0.0, 1.0))
            with numpyro.plate("obs", X.shape[0]):
                numpyro.sample("out", dist.Normal(a, 1.0), obs=y)

        with pytest.raises(KernelValidationError, match="no site named 'y'"):
            make_model(kernel).fit_on_batch(*small, num_steps=1, num_samples=1, progress=False)

    def test_output_not_observed(self, small: tuple[np.ndarray, np.ndarray]) -> None:
        def kernel(X: Any, y: Any = None) -> None:
            a = numpyro.sample("a", dist.Normal(0.0, 1.0))
            with numpyro.plate("obs", X.shape[0]):
                numpyro.sample("y", dist.Normal(a, 1.0))

        with pytest.raises(KernelValidationError, match="observed sample site"):
            make_model(kernel).fit_on_batch(*small, num_steps=1, num_samples=1, progress=False)

    def test_parameter_shares_site_name(self, small: tuple[np.ndarray, np.ndarray]) -> None:
        def kernel(X: Any, y: Any = None, scale: float = 1.0) -> None:
            s = numpyro.sample("scale", dist.HalfNormal(scale))
            with numpyro.plate("obs", X.shape[0]):
                numpyro.sample("y", dist.Normal(0.0, s), obs=y)

        with pytest.raises(KernelValidationError, match=r"\['scale'\]"):
            make_model(kernel).fit_on_batch(*small, num_steps=1, num_samples=1, progress=False)

    def test_kernel_spec_fields(self, fitted: ImpactModel) -> None:
        spec = fitted.kernel_spec
        assert isinstance(spec, KernelSpec)
        assert spec.traced is True
        assert spec.return_sites == ("y", "mu")
        assert spec.sample_sites == ("alpha", "beta", "sigma")
        assert spec.output_observed is True


# ---------------------------------------------------------------------------- 3. SVI fit
class TestSVIFit:
    def test_fit_defaults_recover(self, data: tuple[np.ndarray, np.ndarray]) -> None:
        model = make_model()
        assert model.fit(*data, progress=False) is model
        assert_recovers(model)
        assert model.posterior is not None
        assert model.posterior["alpha"].shape == (1000,)
        assert model.vi_result is not None
        assert np.all(np.isfinite(model.vi_result.losses))
        assert "y" not in model.posterior and "mu" not in model.posterior

    def test_fit_on_batch_recover(self, data: tuple[np.ndarray, np.ndarray]) -> None:
        model = make_model()
        model.fit_on_batch(*data, num_steps=2000, num_samples=200, progress=False)
        assert_recovers(model)
        assert len(model.vi_result.losses) == 2000

    def test_fit_mini_batch_warns_still_falling(self, data: tuple[np.ndarray, np.ndarray]) -> None:
        model = make_model()
        with pytest.warns(UserWarning, match="still falling"):
            model.fit(*data, batch_size=100, epochs=2, num_samples=10, progress=False)
        # 1000 rows / 100 per batch * 2 epochs = 20 steps.
        assert len(model.vi_result.losses) == 20
        assert model.is_fitted()

    def test_fit_with_loader(self, data: tuple[np.ndarray, np.ndarray]) -> None:
        X, y = data
        loader = ArrayLoader(
            ArrayDataset(X=X, y=y), jax.random.key(1), batch_size=100, shuffle=True
        )
        model = make_model()
        # The loader's own batches are used: 10 steps per epoch.
        model.fit(loader, num_samples=200, epochs=300, progress=False)
        assert len(model.vi_result.losses) == 300 * len(loader)
        assert_recovers(model)
        with pytest.raises(ValueError, match="batch_size"):
            make_model().fit(loader, batch_size=10, progress=False)
        with pytest.raises(ValueError, match="must be None"):
            make_model().fit(loader, y, progress=False)

    def test_mcmc_fit_raises(self, small: tuple[np.ndarray, np.ndarray]) -> None:
        mcmc = MCMC(NUTS(linreg), num_warmup=5, num_samples=5, progress_bar=False)
        model = ImpactModel(linreg, jax.random.key(0), mcmc)
        with pytest.raises(TypeError, match="fit_on_batch"):
            model.fit(*small, progress=False)


# ---------------------------------------------------------------------------- 4. MCMC
class TestMCMC:
    def test_mcmc_chains(self, small: tuple[np.ndarray, np.ndarray]) -> None:
        X, y = small
        mcmc = MCMC(
            NUTS(linreg),
            num_warmup=100,
            num_samples=20,
            num_chains=4,
            chain_method="sequential",
            progress_bar=False,
        )
        model = ImpactModel(linreg, jax.random.key(0), mcmc)
        model.fit_on_batch(X, y, progress=False)
        # The user's sampler is not run nor modified.
        assert mcmc.last_state is None
        assert mcmc.post_warmup_state is None
        assert model.posterior is not None
        assert model.posterior["alpha"].shape == (80,)

        tree = model.predict_on_batch(X)
        assert isinstance(tree, xr.DataTree)
        assert tree["posterior"].sizes["chain"] == 4
        assert tree["posterior"].sizes["draw"] == 20
        assert tree["posterior_predictive"].sizes["chain"] == 4
        assert tree["posterior_predictive"]["y"].shape == (4, 20, 20)

        # Chains are laid out as the sampler's own chains, draw for draw: the same
        # sampler run by NumPyro itself with the same key gives the same draws.
        model.fit_on_batch(X, y, rng_key=jax.random.key(3), progress=False)
        tree = model.predict_on_batch(X)
        reference = copy.deepcopy(mcmc)
        reference.run(jax.random.key(3), X=jnp.asarray(X), y=jnp.asarray(y))
        by_chain = reference.get_samples(group_by_chain=True)
        np.testing.assert_array_equal(tree["posterior"]["alpha"].values, by_chain["alpha"])
        np.testing.assert_array_equal(tree["posterior"]["beta"].values, by_chain["beta"])
        assert "mu" not in tree["posterior"]

        post = tree["posterior"].to_dataset()
        rhat = az.rhat(post)
        ess = az.ess(post)
        assert np.isfinite(float(rhat["alpha"]))
        assert float(rhat["alpha"]) < 1.2
        assert float(ess["alpha"]) > 5
        assert rhat["beta"].shape == (3,)

        more = model.sample(num_samples=10)
        assert isinstance(more, xr.DataTree)
        assert more["posterior"].sizes["chain"] == 4
        assert more["posterior"].sizes["draw"] == 10
        assert set(more["posterior"].data_vars) == {"alpha", "beta", "sigma"}
        # Continuing the chains moves on: new draws, posterior of the model unchanged.
        assert not np.allclose(
            more["posterior"]["alpha"].values[:, 0], tree["posterior"]["alpha"].values[:, 0]
        )
        assert model.posterior["alpha"].shape == (80,)
        assert mcmc.last_state is None


# ---------------------------------------------------------------------------- 5. compile once
class TestCompileOnce:
    def test_train_on_batch_traces_once(self, small: tuple[np.ndarray, np.ndarray]) -> None:
        X, y = small
        counter: list[int] = []
        model = make_model(counting_linreg(counter))
        state, loss = model.train_on_batch(X, y)
        after_first = len(counter)
        assert after_first > 0
        assert np.isfinite(float(loss))
        losses = [float(loss)]
        for _ in range(99):
            state, loss = model.train_on_batch(X, y)
            losses.append(float(loss))
        assert len(counter) == after_first
        assert np.all(np.isfinite(losses))
        # The state is the user's SVI object's state: its parameters are the guide's.
        params = model.inference.get_params(state)
        assert params and all(k.endswith(("_auto_loc", "_auto_scale")) for k in params)
        assert losses[-1] < losses[0]

    def test_predict_intervention_traces_once(self, small: tuple[np.ndarray, np.ndarray]) -> None:
        X, y = small
        counter: list[int] = []
        model = make_model(counting_linreg(counter))
        model.fit_on_batch(X, y, num_steps=50, num_samples=20, progress=False)
        key = jax.random.key(7)
        outs = []
        for i, value in enumerate([0.0, 1.0, 2.0, -1.0, 3.5]):
            beta = np.full(3, value, np.float32)
            out = model.predict_on_batch(
                X, intervention={"beta": beta}, rng_key=key, return_datatree=False
            )
            assert isinstance(out, dict)
            if i == 0:
                after_first = len(counter)
            outs.append(out["mu"])
        assert len(counter) == after_first
        for a, b in itertools.pairwise(outs):
            assert not np.allclose(a, b)
        # With beta fixed, mu = alpha + X @ beta exactly.
        alpha = model.posterior["alpha"]
        np.testing.assert_allclose(
            outs[1], alpha[:, None] + X @ np.ones(3, np.float32), rtol=1e-5, atol=1e-5
        )


# ---------------------------------------------------------------------------- 6. rng_key
class TestRngKey:
    def test_explicit_key(self, fitted: ImpactModel, small: tuple[np.ndarray, np.ndarray]) -> None:
        X, _ = small
        before = key_data(fitted.rng_key)
        a = fitted.predict_on_batch(X, rng_key=jax.random.key(11), return_datatree=False)
        b = fitted.predict_on_batch(X, rng_key=jax.random.key(11), return_datatree=False)
        assert isinstance(a, dict) and isinstance(b, dict)
        np.testing.assert_array_equal(a["y"], b["y"])
        np.testing.assert_array_equal(key_data(fitted.rng_key), before)
        c = fitted.predict_on_batch(X, rng_key=jax.random.key(12), return_datatree=False)
        assert isinstance(c, dict)
        assert not np.allclose(a["y"], c["y"])

    def test_omitted_key_reproducible(self, small: tuple[np.ndarray, np.ndarray]) -> None:
        X, _ = small
        rng = np.random.default_rng(0)
        posterior = {
            "alpha": rng.normal(size=30).astype(np.float32),
            "beta": rng.normal(size=(30, 3)).astype(np.float32),
            "sigma": rng.uniform(0.5, 1.0, size=30).astype(np.float32),
        }

        def run() -> list[np.ndarray]:
            model = make_model(seed=21).set_posterior_sample(posterior)
            outs = []
            for _ in range(3):
                out = model.predict_on_batch(X, return_datatree=False)
                assert isinstance(out, dict)
                outs.append(out["y"])
            return outs

        first = run()
        assert not np.allclose(first[0], first[1])
        assert not np.allclose(first[1], first[2])
        second = run()
        for a, b in zip(first, second, strict=True):
            np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------- 7. pickling
def test_cloudpickle_roundtrip(small: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = small
    shift = 0.25

    def closure(X: Any, y: Any = None) -> None:
        alpha = numpyro.sample("alpha", dist.Normal(0.0, 5.0))
        with numpyro.plate("obs", X.shape[0]):
            numpyro.sample("y", dist.Normal(alpha + shift + X[:, 0], 1.0), obs=y)

    model = make_model(closure)
    model.fit_on_batch(X, y, num_steps=100, num_samples=25, progress=False)
    before = model.predict_on_batch(X, rng_key=jax.random.key(3), return_datatree=False)
    loaded = cloudpickle.loads(cloudpickle.dumps(model))
    assert isinstance(loaded, ImpactModel)
    after = loaded.predict_on_batch(X, rng_key=jax.random.key(3), return_datatree=False)
    assert isinstance(before, dict) and isinstance(after, dict)
    np.testing.assert_array_equal(before["y"], after["y"])
    assert loaded.kernel_spec == model.kernel_spec
    assert loaded.posterior is not None and model.posterior is not None
    np.testing.assert_array_equal(loaded.posterior["alpha"], model.posterior["alpha"])
    np.testing.assert_array_equal(key_data(loaded.rng_key), key_data(model.rng_key))
    # The loaded model's derived keys continue the same sequence as the original.
    a = model.predict_on_batch(X, return_datatree=False)
    b = loaded.predict_on_batch(X, return_datatree=False)
    assert isinstance(a, dict) and isinstance(b, dict)
    np.testing.assert_array_equal(a["y"], b["y"])


# ---------------------------------------------------------------------------- 8. interventions
class TestIntervention:
    def test_unknown_site(self, fitted: ImpactModel, small: tuple[np.ndarray, np.ndarray]) -> None:
        X, _ = small
        with pytest.raises(ScenarioError) as info:
            fitted.predict_on_batch(X, intervention={"gamma": 1.0})
        msg = str(info.value)
        assert "gamma" in msg
        for site in ("alpha", "beta", "sigma"):
            assert site in msg

    def test_per_row_wrong_length(self, small: tuple[np.ndarray, np.ndarray]) -> None:
        X, _ = small
        model = make_model(local_kernel).set_posterior_sample({"m": np.zeros(10, np.float32)})
        ok = model.predict_on_batch(
            X,
            intervention={"z": np.arange(20, dtype=np.float32)},
            in_sample=False,
            return_sites=["y"],
            return_datatree=False,
        )
        assert isinstance(ok, dict)
        # y ~ Normal(z + X[:, 0], 0.1) with z set row by row to 0, 1, ..., 19.
        expected = np.broadcast_to(np.arange(20) + X[:, 0], (10, 20))
        np.testing.assert_allclose(ok["y"], expected, atol=0.6)
        with pytest.raises(ScenarioError, match="20 rows"):
            model.predict_on_batch(X, intervention={"z": np.zeros(7, np.float32)}, in_sample=False)


# ---------------------------------------------------------------------------- 9. set_posterior
class TestSetPosterior:
    def test_validation(self, small: tuple[np.ndarray, np.ndarray]) -> None:
        X, _ = small
        model = make_model()
        with pytest.raises(NotFittedError, match="predict_on_batch"):
            model.predict_on_batch(X)
        with pytest.raises(ValueError, match="empty"):
            model.set_posterior_sample({})
        with pytest.raises(ValueError, match="0-D"):
            model.set_posterior_sample({"alpha": np.float32(1.0)})
        with pytest.raises(ValueError, match="leading"):
            model.set_posterior_sample({"alpha": np.zeros(5), "sigma": np.ones(6)})
        assert not model.is_fitted()
        posterior = {
            "alpha": np.ones(8, np.float32),
            "beta": np.zeros((8, 3), np.float32),
            "sigma": np.ones(8, np.float32),
            "y": np.zeros((8, 20), np.float32),
        }
        with pytest.warns(UserWarning, match="output site 'y'"):
            assert model.set_posterior_sample(posterior) is model
        assert model.posterior is not None
        assert set(model.posterior) == {"alpha", "beta", "sigma"}
        out = model.predict_on_batch(X, return_datatree=False)
        assert isinstance(out, dict)
        assert out["y"].shape == (8, 20)
        np.testing.assert_allclose(out["mu"], np.ones((8, 20)))


# ---------------------------------------------------------------------------- 10. outputs
class TestOutputs:
    def test_dict_output(self, fitted: ImpactModel, small: tuple[np.ndarray, np.ndarray]) -> None:
        X, _ = small
        out = fitted.predict_on_batch(X, return_datatree=False)
        assert isinstance(out, dict)
        assert set(out) == {"y", "mu"}
        for v in out.values():
            assert isinstance(v, np.ndarray)
            assert v.shape == (40, 20)

    def test_groups_and_sites(
        self, fitted: ImpactModel, small: tuple[np.ndarray, np.ndarray]
    ) -> None:
        X, _ = small
        tree = fitted.predict_on_batch(X, in_sample=False, return_sites=["mu"])
        assert isinstance(tree, xr.DataTree)
        assert set(tree.children) == {"predictions", "posterior"}
        assert list(tree["predictions"].data_vars) == ["mu"]
        assert tree["predictions"]["mu"].dims == ("chain", "draw", "mu_dim_0")
        assert tree["predictions"].sizes["chain"] == 1
        in_tree = fitted.predict_on_batch(X)
        assert isinstance(in_tree, xr.DataTree)
        assert set(in_tree.children) == {"posterior_predictive", "posterior", "observed_data"}
        assert set(in_tree["posterior_predictive"].data_vars) == {"y", "mu"}
        for t in (tree, in_tree):
            assert "created_at" in t.attrs
            assert "dopax_version" in t.attrs
        import dopax

        assert in_tree.attrs["dopax_version"] == dopax.__version__

    def test_list_input(self, fitted: ImpactModel, small: tuple[np.ndarray, np.ndarray]) -> None:
        X, _ = small
        key = jax.random.key(4)
        a = fitted.predict_on_batch(X, rng_key=key, return_datatree=False)
        b = fitted.predict_on_batch(X.tolist(), rng_key=key, return_datatree=False)
        assert isinstance(a, dict) and isinstance(b, dict)
        np.testing.assert_allclose(a["mu"], b["mu"], rtol=1e-6)
        np.testing.assert_array_equal(a["y"], b["y"])

    def test_sample_svi(self, fitted: ImpactModel) -> None:
        tree = fitted.sample(num_samples=12)
        assert isinstance(tree, xr.DataTree)
        assert set(tree["posterior"].data_vars) == {"alpha", "beta", "sigma"}
        assert tree["posterior"].sizes["draw"] == 12
        assert "created_at" in tree.attrs and "dopax_version" in tree.attrs
        d = fitted.sample(num_samples=5, return_sites="alpha", return_datatree=False)
        assert isinstance(d, dict)
        assert list(d) == ["alpha"] and d["alpha"].shape == (5,)


# ---------------------------------------------------------------------------- 11. prior predictive
class TestPriorPredictive:
    def test_without_fit(self, small: tuple[np.ndarray, np.ndarray]) -> None:
        X, _ = small
        model = make_model()
        tree = model.sample_prior_predictive_on_batch(X, num_samples=30)
        assert isinstance(tree, xr.DataTree)
        assert set(tree.children) == {"prior_predictive"}
        assert tree["prior_predictive"]["y"].shape == (1, 30, 20)
        assert "created_at" in tree.attrs and "dopax_version" in tree.attrs
        assert not model.is_fitted()

    def test_local_latent_differs_across_rows(self, small: tuple[np.ndarray, np.ndarray]) -> None:
        X, _ = small
        model = make_model(local_kernel)
        out = model.sample_prior_predictive_on_batch(
            X, num_samples=50, return_sites=["z", "y"], return_datatree=False
        )
        assert isinstance(out, dict)
        z = out["z"]
        assert z.shape == (50, 20)
        # Each row has its own draws: no two rows share a draw sequence.
        for j in range(1, 20):
            assert not np.allclose(z[:, 0], z[:, j])
        # Across rows within one draw the spread reflects the unit prior sd of z given m.
        assert 0.5 < float(np.mean(np.std(z, axis=1))) < 1.5


def test_signature_matches_spec() -> None:
    params = inspect.signature(ImpactModel.fit).parameters
    assert params["num_samples"].default == 1000
    assert params["epochs"].default == 1
    assert params["batch_size"].default is None
    assert inspect.signature(ImpactModel.fit_on_batch).parameters["num_steps"].default == 10000


def test_intervened_site_reports_the_imposed_value() -> None:
    def local(X: Any, y: Any = None) -> None:
        a = numpyro.sample("a", dist.Normal(0.0, 1.0))
        with numpyro.plate("rows", X.shape[0]):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0))
            numpyro.sample("y", dist.Normal(a + z, 1.0), obs=y)

    model = make_model(local)
    model.set_posterior_sample({"a": np.zeros(4, np.float32)})
    X = np.zeros((5, 1), np.float32)
    out = model.predict_on_batch(
        X, intervention={"z": 3.0}, return_sites=["z"], return_datatree=False, in_sample=False
    )
    np.testing.assert_array_equal(out["z"], np.full((4, 5), 3.0, np.float32))
