"""NaN and Inf in inputs are refused, naming the column and the rows, wherever rows come in."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
import pytest
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.optim import Adam

import dopax
from dopax.cli.main import main
from dopax.exceptions import InputError
from dopax.tables.predictor import TablePredictor


def _frame(xy, n=6):
    X, t, _ = xy
    frame = pd.DataFrame(X[:n].astype(np.float64), columns=["X_0", "X_1", "X_2"])
    frame["t"] = t[:n].astype(np.float64)
    return frame


def test_the_table_predictor_refuses_nan_and_inf(svi_model, xy):
    frame = _frame(xy)
    frame.loc[[1, 4], "X_1"] = [np.nan, np.inf]
    with pytest.raises(InputError) as info:
        TablePredictor(svi_model).predict(frame)
    message = str(info.value)
    assert "column X_1 (kernel argument 'X')" in message
    assert "NaN or Inf in 2 of 6 rows (the first is row 1)" in message


def test_the_served_predictor_answers_a_bad_request_with_400(svi_model, xy):
    pytest.importorskip("mlflow")
    from mlflow.exceptions import MlflowException

    from dopax.mlflow.flavor import ServedPredictor

    frame = _frame(xy)
    frame.loc[2, "t"] = -np.inf
    with pytest.raises(MlflowException) as info:
        ServedPredictor(svi_model).predict(frame)
    assert info.value.get_http_status_code() == 400
    assert "column t (kernel argument 't')" in info.value.message
    assert "1 of 6 rows" in info.value.message
    with pytest.raises(MlflowException) as info:
        ServedPredictor(svi_model).predict(_frame(xy), {"draws": 3})
    assert info.value.get_http_status_code() == 400 and "Unknown parameter" in info.value.message


@pytest.fixture(scope="module")
def saved(svi_model, tmp_path_factory):
    return str(dopax.save_model(svi_model, tmp_path_factory.mktemp("bad") / "model"))


def _exit(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv] + ["--trust-code"])
    return info.value.code, capsys.readouterr().err


def test_the_command_line_exits_2_for_bad_input(saved, xy, tmp_path, capsys):
    out = tmp_path / "never"
    frame = _frame(xy, 20)
    frame.loc[[3, 7], "t"] = np.nan
    frame.to_csv(tmp_path / "nan.csv", index=False)
    code, err = _exit(["predict", saved, tmp_path / "nan.csv", "-o", out], capsys)
    assert code == 2 and "column t" in err and "2 of 20 rows (the first is row 3)" in err
    effect = ["--scenario", "on:t=1", "--scenario", "off:t=0", "--baseline", "off"]
    code, err = _exit(["effect", saved, tmp_path / "nan.csv", *effect, "-o", out], capsys)
    assert code == 2 and "2 of 20 rows" in err
    frame.head(0).to_csv(tmp_path / "header.csv", index=False)
    code, err = _exit(["predict", saved, tmp_path / "header.csv", "-o", out], capsys)
    assert code == 2 and "header.csv holds no rows" in err
    _frame(xy).to_csv(tmp_path / "rows.csv", index=False)
    argv = ["predict", saved, tmp_path / "rows.csv", "-o", out, "--return-sites", "mu,nope"]
    code, err = _exit(argv, capsys)
    assert code == 2 and "--return-sites" in err and "'nope'" in err
    X, t, _ = xy
    np.savez(tmp_path / "short.npz", X=X[:, :2], t=t)  # a kernel argument of the wrong width
    code, err = _exit(["predict", saved, tmp_path / "short.npz", "-o", out], capsys)
    assert code == 2, err
    assert not out.exists()


def _nan_kernel(X, t, y=None):
    # finite inputs, NaN outcomes: log of a negative covariate in some rows
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    with numpyro.plate("obs", X.shape[0]):
        mu = numpyro.deterministic("mu", b * t + jnp.log(X[:, 0]))
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def test_compare_scenarios_refuses_nan_and_never_reports_p_positive_of_nan(xy):
    X, t, _ = xy
    svi = SVI(_nan_kernel, AutoNormal(_nan_kernel), Adam(0.01), Trace_ELBO())
    model = dopax.ImpactModel(_nan_kernel, jax.random.key(0), svi)
    model.set_posterior_sample({"b": np.linspace(0.5, 1.5, 20, dtype=np.float32)})
    scenarios = {"on": {"t": np.ones_like(t)}, "off": {"t": np.zeros_like(t)}}
    bad_on = np.ones_like(t)
    bad_on[[0, 5]] = np.nan
    bad = {**scenarios, "on": {"t": bad_on}}
    with pytest.raises(InputError, match=r"scenario 'on'.*column t .*2 of 64 rows"):
        model.compare_scenarios(X, bad, baseline="off", site="mu", t=t, progress=False)
    with pytest.raises(InputError, match=r"column X_2 .*1 of 64 rows"):
        bad_X = X.copy()
        bad_X[9, 2] = np.inf
        model.compare_scenarios(bad_X, scenarios, baseline="off", site="mu", t=t, progress=False)
    # finite inputs whose draws are NaN: no summary reads as a number
    assert (X[:, 0] < 0).any()
    result = model.compare_scenarios(X, scenarios, baseline="off", site="mu", t=t, progress=False)
    summary = result.summary()
    assert summary["p_positive"].isna().all() and summary["mean"].isna().all()
    assert summary["hdi_low"].isna().all() and summary["hdi_high"].isna().all()
