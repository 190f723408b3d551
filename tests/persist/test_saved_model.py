"""save_model / load_model: round trips without pickle, code files, pickles on request."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from jax.example_libraries import optimizers
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal

import dopax
from dopax.exceptions import NotFittedError, SavedModelError
from helpers import ROOT, pickle_files, subprocess_env
from saved_kernels import linear


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype
        np.testing.assert_array_equal(a[k], b[k])


def test_svi_round_trip_is_bit_identical_and_pickle_free(svi_model, xy, tmp_path):
    X, t, _ = xy
    path = dopax.save_model(svi_model, tmp_path / "svi")
    assert not pickle_files(tmp_path / "svi")
    manifest = json.loads((tmp_path / "svi" / "dopax_model.json").read_text())
    assert manifest["kernel"] == {
        "kind": "reference",
        "ref": "saved_kernels:linear",
        "code": "linear",
    }
    assert manifest["inference"]["kind"] == "svi"
    assert set(manifest["versions"]) >= {"dopax", "jax", "numpyro"}
    assert manifest["inputs"]["rows"] == [
        {"name": "X", "dtype": "float32", "shape": [3]},
        {"name": "t", "dtype": "float32", "shape": []},
    ]
    assert set(manifest["posterior"]["sites"]) == {"alpha", "beta", "tau", "sigma"}
    assert "alpha_auto_loc" in manifest["fit"]["params"]

    # data only: the kernel is given, the SVI object rebuilt from NumPyro constructors
    loaded = dopax.load_model(path, kernel=linear, allow_pickle=False)
    key = jax.random.key(11)
    _same(
        svi_model.predict_on_batch(X, t=t, rng_key=key, return_datatree=False),
        loaded.predict_on_batch(X, t=t, rng_key=key, return_datatree=False),
    )
    # the call counter travels too: derived keys continue where the saved model stood
    again = dopax.load_model(path, trust_code=True)
    _same(
        loaded.predict_on_batch(X, t=t, return_datatree=False),
        again.predict_on_batch(X, t=t, return_datatree=False),
    )
    assert loaded.kernel_spec == svi_model.kernel_spec
    np.testing.assert_array_equal(loaded.vi_result.losses, svi_model.vi_result.losses)
    params = {k: np.asarray(v) for k, v in svi_model.vi_result.params.items()}
    _same(loaded.vi_result.params, params)
    with pytest.raises(NotFittedError, match="loaded model"):
        loaded.sample(num_samples=3)


def test_svi_resumes_from_the_saved_optimizer_state(xy, tmp_path):
    X, t, y = xy
    make = lambda: dopax.ImpactModel(  # noqa: E731
        linear, jax.random.key(4), SVI(linear, AutoNormal(linear), _adam(), Trace_ELBO())
    )
    model = make().fit_on_batch(X, y, t=t, num_steps=30, num_samples=5, progress=False)
    loaded = dopax.load_model(dopax.save_model(model, tmp_path / "m"), linear)
    key = jax.random.key(5)
    model.fit_on_batch(X, y, t=t, num_steps=25, num_samples=5, rng_key=key, progress=False)
    loaded.fit_on_batch(X, y, t=t, num_steps=25, num_samples=5, rng_key=key, progress=False)
    np.testing.assert_array_equal(model.vi_result.losses, loaded.vi_result.losses)
    _same(model.posterior, loaded.posterior)


def _draws(n):
    rng = np.random.default_rng(n)
    return {
        "alpha": rng.normal(size=n).astype(np.float32),
        "beta": rng.normal(size=(n, 3)).astype(np.float32),
        "tau": rng.normal(size=n).astype(np.float32),
        "sigma": rng.uniform(0.5, 1.5, size=n).astype(np.float32),
    }


def _adam():
    from numpyro.optim import ClippedAdam

    return ClippedAdam(step_size=0.05, b1=0.8, clip_norm=5.0)


def test_mcmc_round_trip_keeps_draws_and_chains(mcmc_model, xy, tmp_path):
    X, t, _ = xy
    path = dopax.save_model(mcmc_model, tmp_path / "mcmc")
    assert not pickle_files(tmp_path / "mcmc")
    manifest = json.loads((tmp_path / "mcmc" / "dopax_model.json").read_text())
    assert manifest["posterior"]["num_chains"] == 2
    assert manifest["inference"]["sampler"]["class"] == "numpyro.infer.hmc:NUTS"
    loaded = dopax.load_model(path, linear)
    assert loaded.inference.num_chains == 2 and loaded.inference.num_warmup == 60
    key = jax.random.key(2)
    a = mcmc_model.predict_on_batch(X, t=t, rng_key=key)
    b = loaded.predict_on_batch(X, t=t, rng_key=key)
    assert b["posterior"].sizes["chain"] == 2
    for group in ("posterior", "posterior_predictive"):
        for name, var in a[group].data_vars.items():
            np.testing.assert_array_equal(var.values, b[group][name].values)


def test_closure_kernel_needs_allow_pickle(xy, tmp_path):
    X, t, _ = xy
    scale = 2.0

    def closure(X, t, y=None):
        return linear(X * scale, t, y)

    model = dopax.ImpactModel(
        closure, jax.random.key(0), SVI(closure, AutoNormal(closure), _adam(), Trace_ELBO())
    )
    model.set_posterior_sample(_draws(4))
    path = dopax.save_model(model, tmp_path / "c")
    with pytest.raises(SavedModelError, match=r"closure over 'scale'.*allow_pickle=True"):
        dopax.load_model(path)
    key = jax.random.key(3)
    expected = model.predict_on_batch(X, t=t, rng_key=key, return_datatree=False)
    for loaded in (dopax.load_model(path, allow_pickle=True), dopax.load_model(path, closure)):
        _same(expected, loaded.predict_on_batch(X, t=t, rng_key=key, return_datatree=False))


def test_unrecordable_inference_needs_inference_or_allow_pickle(tmp_path):
    # a JAX optimizer triple: NumPyro wraps it in closures that hold no settings
    svi = SVI(linear, AutoNormal(linear), optimizers.adam(0.01), Trace_ELBO())
    model = dopax.ImpactModel(linear, jax.random.key(0), svi).set_posterior_sample(_draws(3))
    path = dopax.save_model(model, tmp_path / "o")
    assert (tmp_path / "o" / "inference.pkl").exists()
    with pytest.raises(SavedModelError, match=r"inference=.*allow_pickle=True"):
        dopax.load_model(path, linear)
    assert dopax.load_model(path, linear, inference=svi).is_fitted()
    assert dopax.load_model(path, linear, allow_pickle=True).inference.optim is not None


def test_script_kernel_is_saved_as_a_code_file(tmp_path):
    script = tmp_path / "fit_script.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            import jax, numpy as np, numpyro
            import numpyro.distributions as dist
            from numpyro.infer import SVI, Trace_ELBO
            from numpyro.infer.autoguide import AutoNormal
            from numpyro.optim import Adam
            import dopax

            PRIOR_SCALE = 3.0

            def shift(v):
                return v + 1.0

            def kernel(X, y=None):
                a = numpyro.sample("a", dist.Normal(0.0, PRIOR_SCALE))
                with numpyro.plate("rows", X.shape[0]):
                    mu = numpyro.deterministic("mu", shift(a) * X[:, 0])
                    numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

            X = np.linspace(-1, 1, 12, dtype=np.float32)[:, None]
            model = dopax.ImpactModel(
                kernel, jax.random.key(0), SVI(kernel, AutoNormal(kernel), Adam(0.05), Trace_ELBO())
            )
            model.set_posterior_sample({"a": np.linspace(0.5, 1.5, 8, dtype=np.float32)})
            dopax.save_model(model, sys.argv[1])
            out = model.predict_on_batch(X, rng_key=jax.random.key(9), return_datatree=False)
            np.save(sys.argv[2], out["mu"])
            """
        )
    )
    folder, expected = tmp_path / "model", tmp_path / "mu.npy"
    subprocess.run(
        [sys.executable, str(script), str(folder), str(expected)],
        check=True,
        cwd=ROOT,
        env=subprocess_env(),
        timeout=300,
    )
    assert not pickle_files(folder)
    code = (folder / "kernel.py").read_text()
    assert "PRIOR_SCALE = 3.0" in code and "def shift(v):" in code
    assert "import numpyro.distributions as dist" in code
    loaded = dopax.load_model(folder, trust_code=True)
    X = np.linspace(-1, 1, 12, dtype=np.float32)[:, None]
    out = loaded.predict_on_batch(X, rng_key=jax.random.key(9), return_datatree=False)
    np.testing.assert_array_equal(out["mu"], np.load(expected))


def test_a_reference_that_does_not_import_falls_back_to_the_saved_source(svi_model, xy, tmp_path):
    X, t, _ = xy
    path = tmp_path / "moved"
    dopax.save_model(svi_model, path)
    manifest = json.loads((path / "dopax_model.json").read_text())
    manifest["kernel"]["ref"] = "saved_kernels_renamed:linear"  # as if the module were gone
    (path / "dopax_model.json").write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="does not import here.*source saved with the model"):
        loaded = dopax.load_model(path, trust_code=True)
    key = jax.random.key(6)
    _same(
        svi_model.predict_on_batch(X, t=t, rng_key=key, return_datatree=False),
        loaded.predict_on_batch(X, t=t, rng_key=key, return_datatree=False),
    )


def test_other_versions_warn_with_both_versions(svi_model, tmp_path):
    path = tmp_path / "v"
    dopax.save_model(svi_model, path)
    manifest = json.loads((path / "dopax_model.json").read_text())
    manifest["versions"]["numpyro"] = "0.0.1"
    (path / "dopax_model.json").write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match=r"saved with numpyro 0\.0\.1 and is loaded with numpyro"):
        dopax.load_model(path, linear)


def test_folders_are_checked(svi_model, tmp_path):
    with pytest.raises(SavedModelError, match="No saved dopax model"):
        dopax.load_model(tmp_path)
    (tmp_path / "other.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        dopax.save_model(svi_model, tmp_path)
    with pytest.raises(FileExistsError, match="not empty"):
        dopax.save_model(svi_model, tmp_path, overwrite=True)
    target = tmp_path / "m"
    dopax.save_model(svi_model, target)
    dopax.save_model(svi_model, target, overwrite=True)
    assert dopax.load_model(target, linear).is_fitted()


def test_unfitted_model_round_trips(tmp_path):
    svi = SVI(linear, AutoNormal(linear), _adam(), Trace_ELBO())
    model = dopax.ImpactModel(linear, jax.random.key(5), svi, param_input="X")
    loaded = dopax.load_model(dopax.save_model(model, tmp_path / "u"), linear)
    assert not loaded.is_fitted() and loaded.kernel_spec is None
    assert loaded.rng_key.dtype == model.rng_key.dtype


def test_round_trip_through_an_fsspec_url(svi_model, xy):
    X, t, _ = xy
    url = dopax.save_model(svi_model, "memory://dopax-tests/saved-model")
    loaded = dopax.load_model(url, trust_code=True)
    key = jax.random.key(1)
    _same(
        svi_model.predict_on_batch(X, t=t, rng_key=key, return_datatree=False),
        loaded.predict_on_batch(X, t=t, rng_key=key, return_datatree=False),
    )
