"""Beyond one machine: results in an S3-compatible store, blocks on a Dask cluster.

The tests start what they need on loopback: moto's S3 server in a thread on a
free port (a bucket per test), and a ``distributed.LocalCluster`` of two
worker processes.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
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

from dopax import ImpactModel, open_result
from dopax.config import config_context
from dopax.exceptions import IncompleteResultError
from dopax.output.store import is_complete

pytestmark = pytest.mark.filterwarnings(
    # distributed's own shutdown chatter, not dopax's
    "ignore::ResourceWarning",
    "ignore:.*Port 8787 is already in use:UserWarning",
    "ignore::DeprecationWarning:distributed.*",
    "ignore::DeprecationWarning:botocore.*",
)

N_ROWS = 300
N_DRAWS = 40
KEY = 11


def kernel(X: Any, t: Any = None, y: Any = None) -> None:
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]))
    tau = numpyro.sample("tau", dist.Normal(0.0, 1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("obs", X.shape[0]):
        mu = numpyro.deterministic("mu", X @ beta + tau * t)
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def make_model() -> ImpactModel:
    rng = np.random.default_rng(0)
    model = ImpactModel(
        kernel, jax.random.key(0), SVI(kernel, AutoNormal(kernel), Adam(0.01), Trace_ELBO())
    )
    model.set_posterior_sample(
        {
            "beta": rng.normal(size=(N_DRAWS, 3)).astype(np.float32),
            "tau": rng.normal(size=N_DRAWS).astype(np.float32),
            "sigma": rng.uniform(0.5, 1.5, size=N_DRAWS).astype(np.float32),
        }
    )
    return model


def make_inputs(n_rows: int = N_ROWS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(n_rows, 3)).astype(np.float32)
    t = (rng.uniform(size=n_rows) < 0.5).astype(np.float32)
    y = (X @ np.ones(3) + t + rng.normal(size=n_rows)).astype(np.float32)
    return X, t, y


def draws(tree: xr.DataTree, group: str) -> dict[str, np.ndarray]:
    return {str(k): np.asarray(v.values) for k, v in tree[group].to_dataset().data_vars.items()}


def assert_identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    pytest.importorskip("moto")
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_endpoint: str) -> tuple[str, dict[str, Any]]:
    """A new bucket on the loopback server: ``(s3://bucket, storage_options)``."""
    import s3fs

    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"},
    }
    bucket = f"dopax-{uuid.uuid4().hex[:10]}"
    boto3 = pytest.importorskip("boto3")
    boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket=bucket)
    s3fs.S3FileSystem.clear_instance_cache()
    return f"s3://{bucket}", options


def _keys(url: str, options: dict[str, Any]) -> list[str]:
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(**options)
    return [p for p in fs.find(url.removeprefix("s3://")) if not p.endswith("/")]


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    distributed = pytest.importorskip("distributed")
    # distributed sets variables for its workers (MALLOC_TRIM_THRESHOLD_,
    # OMP_NUM_THREADS, ...) in this process's environment; put it back after.
    environ = dict(os.environ)
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        host="127.0.0.1",
        silence_logs=50,
    )
    try:
        with distributed.Client(cluster) as c:
            yield c
    finally:
        cluster.close()
        os.environ.clear()
        os.environ.update(environ)


# ----------------------------------------------------------------------------- object stores


def test_predict_to_s3_is_bit_identical_and_reopens(
    tmp_path: Path, s3: tuple[str, dict[str, Any]]
) -> None:
    url, options = s3
    model = make_model()
    X, t, _ = make_inputs()
    key = jax.random.key(KEY)
    local = model.predict(X, t=t, rng_key=key, batch_size=64, output_dir=tmp_path, progress=False)
    remote = model.predict(
        X, t=t, rng_key=key, batch_size=64, output_dir=f"{url}/runs", storage_options=options,
        progress=False,
    )  # fmt: skip
    assert remote.attrs["artifact_path"].startswith(f"{url}/runs/predict-")
    assert_identical(draws(remote, "posterior_predictive"), draws(local, "posterior_predictive"))
    reopened = open_result(remote.attrs["artifact_path"], storage_options=options)
    assert_identical(draws(reopened, "posterior_predictive"), draws(local, "posterior_predictive"))
    assert_identical(draws(reopened, "posterior"), draws(local, "posterior"))


class FailingRows:
    """An input that fails to read after its first blocks (a real read error mid-run)."""

    def __init__(self, data: np.ndarray, fail_from: int) -> None:
        self.data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.fail_from = fail_from

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, slice) and (index.stop or 0) > self.fail_from:
            raise OSError("the input disk went away")
        return self.data[index]

    def __len__(self) -> int:
        return int(self.shape[0])


def test_a_failure_mid_write_leaves_nothing_complete_on_s3(s3: tuple[str, dict[str, Any]]) -> None:
    url, options = s3
    model = make_model()
    X, t, _ = make_inputs()
    with pytest.raises(OSError, match="input disk went away"):
        model.predict(
            FailingRows(X, fail_from=200), t=t, batch_size=50, output_dir=f"{url}/runs",
            storage_options=options, progress=False,
        )  # fmt: skip
    assert _keys(f"{url}/runs", options) == []
    assert not is_complete(f"{url}/runs/anything.zarr", options)
    with pytest.raises(IncompleteResultError):
        open_result(f"{url}/runs/anything.zarr", storage_options=options)


def test_unknown_scheme_raises_naming_the_supported_ones(tmp_path: Path) -> None:
    model = make_model()
    X, t, _ = make_inputs()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(ValueError, match=r"unknown scheme 'ftp'.*s3://"):
            model.predict(X, t=t, output_dir="ftp://host/runs", progress=False)
        with pytest.raises(ValueError, match=r"unknown scheme"):
            open_result("ftp://host/runs/x.zarr")
    finally:
        os.chdir(cwd)
    assert list(tmp_path.iterdir()) == []  # no local folder named after the URL


# ----------------------------------------------------------------------------- Dask cluster


def test_cluster_results_equal_the_single_process_run(
    tmp_path: Path, client: Any, s3: tuple[str, dict[str, Any]]
) -> None:
    url, options = s3
    model = make_model()
    X, t, y = make_inputs()
    key = jax.random.key(KEY)
    ref = model.predict(
        X, t=t, rng_key=key, batch_size=64, output_dir=tmp_path / "a", progress=False
    )
    on_cluster = model.predict(
        X, t=t, rng_key=key, batch_size=64, output_dir=tmp_path / "b", client=client, progress=False
    )
    assert on_cluster.attrs["dopax_devices"] == 2
    assert_identical(draws(on_cluster, "posterior_predictive"), draws(ref, "posterior_predictive"))
    with config_context(client=client):
        to_s3 = model.predict(
            X, t=t, rng_key=key, batch_size=64, output_dir=f"{url}/c", storage_options=options,
            progress=False,
        )  # fmt: skip
    assert_identical(draws(to_s3, "posterior_predictive"), draws(ref, "posterior_predictive"))

    ll_ref = model.log_likelihood(
        X, y, t=t, batch_size=64, output_dir=tmp_path / "c", progress=False
    )
    ll = model.log_likelihood(
        X, y, t=t, batch_size=64, output_dir=tmp_path / "d", client=client, progress=False
    )
    assert_identical(draws(ll, "log_likelihood"), draws(ll_ref, "log_likelihood"))

    scenarios = {
        "control": {"t": np.zeros(N_ROWS, np.float32)},
        "treated": {"t": np.ones(N_ROWS, np.float32)},
    }
    eff_ref = model.compare_scenarios(
        X, scenarios, baseline="control", t=t, rng_key=key, batch_size=64, keep_draws=True,
        output_dir=tmp_path / "e", progress=False,
    )  # fmt: skip
    eff = model.compare_scenarios(
        X, scenarios, baseline="control", t=t, rng_key=key, batch_size=64, keep_draws=True,
        output_dir=tmp_path / "f", client=client, progress=False,
    )  # fmt: skip
    for group in ("draws", "rows"):
        assert_identical(draws(eff.tree, group), draws(eff_ref.tree, group))
    assert_identical(draws(eff.tree, "scenario_draws"), draws(eff_ref.tree, "scenario_draws"))


def test_answers_on_the_cluster_equal_the_local_ones(tmp_path: Path, client: Any) -> None:
    model = make_model()
    X, t, y = make_inputs()
    key = jax.random.key(KEY)
    common = {"t": t, "rng_key": key, "batch_size": 64, "progress": False}
    ref = model.summarize(X, y, quantiles=(0.5,), output_dir=tmp_path / "a", **common)
    got = model.summarize(
        X, y, quantiles=(0.5,), output_dir=tmp_path / "b", client=client, **common
    )
    assert got.attrs["dopax_devices"] == 2
    assert set(draws(got, "summary")) >= {"y_mean", "y_lower", "y_q0.5", "y_pit", "mu_sd"}
    assert_identical(draws(got, "summary"), draws(ref, "summary"))
    # the coverage is gathered from the tasks' blocks, in block order
    assert 0.5 < got.attrs["coverage"] < 1.0
    assert got.attrs["coverage"] == ref.attrs["coverage"]
    with config_context(client=client):
        settings = model.summarize(X, y, quantiles=(0.5,), output_dir=tmp_path / "c", **common)
    assert settings.attrs["dopax_devices"] == 2
    assert_identical(draws(settings, "summary"), draws(ref, "summary"))

    # the posterior is not fitted to these rows: most Pareto k are high, and
    # the warning counts them from the tasks' blocks as from the local ones;
    # 19 blocks in 5 tasks, whose totals (merged in block order, whatever order
    # the tasks finish in) equal the local ones bit for bit
    with pytest.warns(UserWarning, match="Pareto k") as here:
        loo_ref = model.loo(X, y, t=t, batch_size=16, output_dir=tmp_path / "d", progress=False)
    with pytest.warns(UserWarning, match="Pareto k") as there:
        loo = model.loo(
            X, y, t=t, batch_size=16, output_dir=tmp_path / "e", client=client, progress=False
        )
    assert [str(w.message) for w in there] == [str(w.message) for w in here]
    assert open_result(loo.attrs["artifact_path"]).attrs["dopax_devices"] == 2
    for field in ("elpd_loo", "se", "p_loo", "n_data_points", "warning"):
        assert loo[field] == loo_ref[field], field
    np.testing.assert_array_equal(loo.loo_i.values, loo_ref.loo_i.values)
    np.testing.assert_array_equal(loo.pareto_k.values, loo_ref.pareto_k.values)
    assert loo.n_data_points == N_ROWS


def test_a_lost_worker_is_recomputed_and_the_result_is_identical(
    tmp_path: Path, client: Any
) -> None:
    model = make_model()
    X, t, _ = make_inputs(4000)
    key = jax.random.key(KEY)
    ref = model.predict(
        X, t=t, rng_key=key, batch_size=50, output_dir=tmp_path / "a", progress=False
    )
    pids = client.run(os.getpid)
    victim = sorted(pids.values())[0]
    killed = threading.Event()

    def kill_when_running() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            processing = client.processing()
            if any(processing.values()):
                os.kill(victim, signal.SIGKILL)
                killed.set()
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_when_running, daemon=True)
    killer.start()
    got = model.predict(
        X, t=t, rng_key=key, batch_size=50, output_dir=tmp_path / "b", client=client, progress=False
    )
    killer.join()
    assert killed.is_set()
    assert_identical(draws(got, "posterior_predictive"), draws(ref, "posterior_predictive"))
    client.wait_for_workers(2, timeout=60)
