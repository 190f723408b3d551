"""Errors about the user's data name the argument, the shape expected and the fix."""

from __future__ import annotations

import warnings
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
from dopax.exceptions import InputError, ScenarioError

N = 20


def kernel(X: Any, t: Any, y: Any = None) -> None:
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([3]))
    tau = numpyro.sample("tau", dist.Normal(0.0, 1.0))
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(X @ beta + tau * t, 1.0), obs=y)


def _model() -> ImpactModel:
    return ImpactModel(
        kernel, jax.random.key(0), SVI(kernel, AutoNormal(kernel), Adam(0.05), Trace_ELBO())
    )


@pytest.fixture(scope="module")
def setup() -> tuple[ImpactModel, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, 3)).astype(np.float32)
    t = (rng.random(N) < 0.5).astype(np.float32)
    y = (X.sum(1) + t).astype(np.float32)
    model = _model()
    model.fit_on_batch(X, y, t=t, num_steps=5, num_samples=5, progress=False)
    return model, X, t, y


def test_a_row_argument_one_row_short(setup: Any) -> None:
    model, X, t, y = setup
    with pytest.raises(InputError, match=r"`t` has shape \(19,\).*pass `t` with shape \(20,\)"):
        model.predict(X, t=t[:-1], progress=False)
    with pytest.raises(InputError, match=r"`t` has shape \(19,\).*pass `t` with shape \(20,\)"):
        _model().fit_on_batch(X, y, t=t[:-1], num_steps=2, progress=False)


def test_wrong_number_of_columns(setup: Any) -> None:
    model, X, t, _ = setup
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "could not run on a few rows" detour first
        with pytest.raises(InputError, match=r"`X` has shape \(20, 2\).*shape \(20, 3\)"):
            model.predict(X[:, :2], t=t, progress=False)


def test_no_rows_and_bad_return_sites(setup: Any) -> None:
    model, X, t, _ = setup
    with pytest.raises(ValueError, match=r"`X` has no rows \(shape \(0, 3\)\)"):
        model.predict(X[:0], t=t[:0], progress=False)
    with pytest.raises(TypeError, match=r"`return_sites` must be a site name .* got 5"):
        model.predict_on_batch(X, t=t, return_sites=5)
    with pytest.raises(TypeError, match=r"`return_sites` must be a site name .* got 5"):
        model.sample(num_samples=2, return_sites=5)


def test_intervention_of_the_wrong_shape(setup: Any) -> None:
    model, X, t, _ = setup
    with pytest.raises(ScenarioError, match=r"intervention\['beta'\] has shape \(5,\).*\(3,\)"):
        model.predict(X, t=t, intervention={"beta": np.ones(5)}, progress=False)
    with pytest.raises(ScenarioError, match=r"intervention\['y'\] has shape \(20, 1\)"):
        model.predict_on_batch(X, t=t, intervention={"y": np.ones((N, 1))})


def test_y_of_shape_n_by_one(setup: Any) -> None:
    model, X, t, y = setup
    with pytest.raises(InputError, match=r"`y` has shape \(20, 1\).*Pass `y` with shape \(20,\)"):
        model.log_likelihood(X, y[:, None], t=t, progress=False)
    with pytest.raises(InputError, match=r"`y` has shape \(20, 1\)"):
        _model().fit_on_batch(X, y[:, None], t=t, num_steps=2, progress=False)


def test_nan_in_the_first_rows_changes_nothing_later(setup: Any) -> None:
    model, X, t, _ = setup
    X_nan = X.copy()
    X_nan[:2] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rows are still split: no warning
        first = model.predict(X_nan, t=t, progress=False)
        later = model.predict(X, t=t, progress=False)
    assert first.attrs["path"] == later.attrs["path"] == "rows"
    y = first["posterior_predictive"]["y"].values
    assert np.isnan(y[..., :2]).all() and np.isfinite(y[..., 2:]).all()
