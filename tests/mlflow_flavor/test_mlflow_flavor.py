"""The MLflow flavor for real: SQLite tracking, pyfunc, `mlflow models serve`, autolog."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import jax
import numpy as np
import pandas as pd
import pytest
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.optim import Adam

import dopax
from dopax.tables.scoring import summarize_rows
from helpers import subprocess_env
from saved_kernels import linear

mlflow = pytest.importorskip("mlflow")
import dopax.mlflow  # noqa: E402


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """One SQLite tracking store for the module (creating one runs every schema migration)."""
    root = tmp_path_factory.mktemp("mlflow")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    experiment = mlflow.create_experiment(
        "dopax-tests", artifact_location=(root / "artifacts").as_uri()
    )
    mlflow.set_experiment(experiment_id=experiment)
    yield experiment
    if mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(previous)


def _frame(X, t, n=6):
    frame = pd.DataFrame(X[:n].astype(np.float64), columns=[f"X_{j}" for j in range(X.shape[1])])
    frame["t"] = t[:n].astype(np.float64)
    return frame


def _counter(model, path):
    dopax.save_model(model, path)
    return json.loads((path / "dopax_model.json").read_text())["rng"]["counter"]


def test_log_model_load_model_and_pyfunc(svi_model, xy, tracking, tmp_path):
    X, t, _ = xy
    frame = _frame(X, t)
    counter = _counter(svi_model, tmp_path / "before")
    with mlflow.start_run():
        info = dopax.mlflow.log_model(svi_model, name="model", input_example=frame.head(3))
    assert _counter(svi_model, tmp_path / "after") == counter  # the example used no derived key
    assert info.flavors["dopax"]["data"] == "model"
    assert {p.name for p in info.signature.params.params} == {
        "return_sites", "num_draws", "intervention", "prob", "seed"
    }  # fmt: skip
    assert info.signature.inputs.input_names() == ["X_0", "X_1", "X_2", "t"]
    local = mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "dl"))
    with open(os.path.join(local, "requirements.txt")) as f:
        reqs = f.read()
    for name in ("dopax==", "jax==", "numpyro=="):
        assert name in reqs

    loaded = dopax.mlflow.load_model(info.model_uri)
    key = jax.random.key(8)
    a = svi_model.predict_on_batch(X, t=t, rng_key=key, return_datatree=False)
    b = loaded.predict_on_batch(X, t=t, rng_key=key, return_datatree=False)
    np.testing.assert_array_equal(a["y"], b["y"])

    pyf = mlflow.pyfunc.load_model(info.model_uri)
    out = pyf.predict(frame)
    assert list(out.columns[:4]) == ["y_mean", "y_sd", "y_lower", "y_upper"]
    expected = summarize_rows(svi_model, X[:6], {"t": t[:6]})
    np.testing.assert_allclose(out.to_numpy(), expected.to_numpy(), rtol=1e-6)
    params = {"return_sites": ["mu"], "num_draws": 20, "intervention": '{"tau": 0.0}', "prob": 0.5}
    some = pyf.predict(frame, params=params)
    assert list(some.columns) == ["mu_mean", "mu_sd", "mu_lower", "mu_upper"]
    expected = summarize_rows(
        svi_model, X[:6], {"t": t[:6]}, return_sites=["mu"], num_draws=20,
        intervention={"tau": 0.0}, prob=0.5,
    )  # fmt: skip
    np.testing.assert_allclose(some.to_numpy(), expected.to_numpy(), rtol=1e-6)
    with pytest.raises(Exception, match="'t'"):
        pyf.predict(frame.drop(columns=["t"]))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _served(local, tmp_path, workers=1):
    """``mlflow models serve`` of the model folder ``local`` on loopback; yields its URL."""
    port = _free_port()
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed in the finally below
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(local)]
    cmd += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", str(workers)]
    proc = subprocess.Popen(
        cmd, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the server did not start in time"
            time.sleep(0.5)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _invoke(base, frame, params):
    """POST rows to ``/invocations``: (HTTP status, parsed JSON body)."""
    body = {"dataframe_split": frame.to_dict(orient="split"), "params": params}
    request = urllib.request.Request(
        f"{base}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=240) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def served(svi_model, tmp_path_factory):
    """The fitted model saved as an MLflow model and served on loopback: (folder, URL)."""
    root = tmp_path_factory.mktemp("serve")
    local = root / "served"
    dopax.mlflow.save_model(svi_model, str(local))
    with _served(local, root) as base:
        yield local, base


def test_concurrent_cold_requests_all_succeed_and_equal_sequential_ones(served, xy):
    # The server's first requests: 8 clients at once, each with a row count the
    # server has not seen (every request traces and compiles its own program),
    # 5 rounds of new row counts; then the same requests one at a time: every
    # answer 200 and equal. (Runs before the other test of the served model.)
    X, t, _ = xy
    _, base = served
    params = {"num_draws": 30, "seed": 5}
    rng = np.random.default_rng(0)
    counts_seen: set[int] = set()
    rounds = []
    for _ in range(5):
        fresh = rng.choice(sorted(set(range(1, 61)) - counts_seen), size=8, replace=False)
        counts_seen.update(int(n) for n in fresh)
        rounds.append(fresh)
    for counts in rounds:
        frames = [_frame(X, t, int(n)) for n in counts]
        barrier = threading.Barrier(len(frames))

        def call(frame, barrier=barrier):
            barrier.wait()
            return _invoke(base, frame, params)

        with concurrent.futures.ThreadPoolExecutor(len(frames)) as pool:
            together = list(pool.map(call, frames))
        alone = [_invoke(base, frame, params) for frame in frames]
        for n, (status, answer), (status_1, answer_1) in zip(counts, together, alone, strict=True):
            assert status == 200 and status_1 == 200, (n, answer, answer_1)
            got = pd.DataFrame(answer["predictions"]).to_numpy()
            assert got.shape[0] == n
            np.testing.assert_array_equal(got, pd.DataFrame(answer_1["predictions"]))
    with urllib.request.urlopen(f"{base}/ping", timeout=5) as r:
        assert r.status == 200


def test_served_model_answers_as_in_process(served, xy, tmp_path):
    X, t, _ = xy
    frame = _frame(X, t, 5)
    local, base = served
    params = {"num_draws": 40, "seed": 3}
    expected = mlflow.pyfunc.load_model(str(local)).predict(frame, params=params)
    bad = frame.copy()
    bad.loc[[1, 3], "t"] = np.nan
    status, answer = _invoke(base, frame, params)
    bad_status, bad_answer = _invoke(base, bad, params)
    missing_status, missing_answer = _invoke(base, frame.drop(columns=["t"]), params)
    assert status == 200
    got = pd.DataFrame(answer["predictions"])
    assert list(got.columns) == list(expected.columns)
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-9)
    # a bad request is the client's: 400, dopax's own message, nothing of the server's
    for code, answer in ((bad_status, bad_answer), (missing_status, missing_answer)):
        assert code == 400, answer
        assert answer["error_code"] == "INVALID_PARAMETER_VALUE"
        text = json.dumps(answer)
        assert "stack_trace" not in answer and "Traceback" not in text
        assert str(local.parent) not in text and "site-packages" not in text
    assert "column t (kernel argument 't')" in bad_answer["message"]
    assert "NaN or Inf in 2 of 5 rows" in bad_answer["message"]
    assert "missing inputs ['t']" in missing_answer["message"]  # MLflow's own schema check


def _run_data(run_id):
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    return client, run, artifacts


def test_autolog_svi_logs_params_losses_kernel_and_model(xy, tracking):
    X, t, y = xy
    dopax.mlflow.autolog()
    try:
        svi = SVI(linear, AutoNormal(linear), Adam(0.03), Trace_ELBO())
        model = dopax.ImpactModel(linear, jax.random.key(2), svi)
        model.fit_on_batch(X, y, t=t, num_steps=40, num_samples=10, progress=False)
        run_id = mlflow.last_active_run().info.run_id
    finally:
        dopax.mlflow.autolog(disable=True)
    client, run, artifacts = _run_data(run_id)
    params = run.data.params
    assert params["method"] == "fit_on_batch" and params["num_steps"] == "40"
    assert params["guide"] == "AutoNormal" and params["optim"] == "Adam"
    assert float(params["optim.step_size"]) == pytest.approx(0.03)
    losses = client.get_metric_history(run_id, "loss")
    assert [m.step for m in losses] == list(range(40))
    np.testing.assert_allclose([m.value for m in losses], model.vi_result.losses, rtol=1e-6)
    assert "kernel.py" in artifacts
    source = mlflow.artifacts.load_text(f"runs:/{run_id}/kernel.py")
    assert "def linear(" in source
    logged = mlflow.search_logged_models(experiment_ids=[tracking], output_format="list")
    assert logged and logged[0].source_run_id == run_id


def test_autolog_mcmc_logs_diagnostics(xy, tracking):
    X, t, y = xy
    dopax.mlflow.autolog(log_models=False)
    try:
        mcmc = MCMC(
            NUTS(linear), num_warmup=30, num_samples=30, num_chains=2,
            chain_method="sequential", progress_bar=False,
        )  # fmt: skip
        dopax.ImpactModel(linear, jax.random.key(3), mcmc).fit_on_batch(X, y, t=t, progress=False)
        run_id = mlflow.last_active_run().info.run_id
    finally:
        dopax.mlflow.autolog(disable=True)
    _, run, artifacts = _run_data(run_id)
    metrics = run.data.metrics
    assert {"divergences", "max_rhat", "min_ess"} <= set(metrics)
    assert metrics["max_rhat"] > 0.9 and metrics["min_ess"] > 0
    assert run.data.params["sampler"] == "NUTS" and run.data.params["mcmc.num_chains"] == "2"
    assert "kernel.py" in artifacts
