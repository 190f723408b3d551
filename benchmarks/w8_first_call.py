"""W8: a new model's first call, from the call to a complete result, in a fresh process.

Models:
    w1   the W1 kernel (linear, ``y`` and ``mu``) with a fitted posterior set by
         ``set_posterior_sample``; 2,000 rows x 1,000 draws.
    bnn  the tutorial's model (``examples/tutorial_bnn.py``, seed ``003``): a flax
         ``nnx`` network 100-32-32-1 ending in ``.squeeze()``, every weight a
         latent, a subsampled plate, deterministic ``p``; fitted with the
         package's own ``fit`` (mini-batches of 2,000 rows) on the same rows;
         50,000 rows x 500 draws, ``batch_size=100_000`` as in the tutorial.

Methods:
    predict    ``predict(X)`` persisted to Zarr.
    scenarios  dopax: ``compare_scenarios`` of ``base`` (``X``) and ``shift``
               (``X`` with 1 added to its first column), baseline ``base``;
               aimz: ``predict`` of both inputs (same ``rng_key``), then
               ``estimate_effect`` and the mean effect over rows per draw.

Every measurement is a fresh process (``--worker``): it imports the package
(timed apart), builds the data and the model, fits (outside the clock), waits
for every computation in flight, then times the first call and, for
reference, a second identical call. A case runs ``--reps`` processes and
reports the best first call. aimz runs in its own
interpreter (``--aimz-python``), a scratch environment where it is installed;
it is never a dependency of dopax. The package ``dopax_cache`` is dopax with
``ExecutionConfig.compilation_cache_dir`` set to a folder that one untimed
process filled first: a new process that finds its programs compiled.

Usage:
    python benchmarks/w8_first_call.py --reps 2 --aimz-python /work/aimz-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:
    from benchmarks import common
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    import common  # type: ignore[no-redef]

NAME = "w8_first_call"
MODELS = ("w1", "bnn")
METHODS = ("predict", "scenarios")
SIZES = {"w1": (2_000, 1_000), "bnn": (50_000, 500)}

# ----------------------------------------------------------------------------- models


def w1_setup(package: str, n: int, draws: int) -> tuple[Any, np.ndarray]:
    try:
        from benchmarks import w1_linear
    except ModuleNotFoundError:
        import w1_linear  # type: ignore[no-redef]

    X = common.make_X(n, w1_linear.NUM_FEATURES)
    model = common.new_impact_model(package, w1_linear.kernel, w1_linear.posterior(draws))
    return model, X


def bnn_setup(package: str, n: int, draws: int) -> tuple[Any, np.ndarray]:
    """The seed tutorial's model, written as the tutorial writes it."""
    import jax.numpy as jnp
    import numpyro.distributions as dist
    from flax import nnx
    from jax import Array, default_backend, random
    from numpyro import deterministic, plate, sample
    from numpyro.contrib.module import random_nnx_module
    from numpyro.infer import SVI, Trace_ELBO, init_to_uniform
    from numpyro.infer.autoguide import AutoNormal
    from optax import adam

    impact_model = common.import_impact_model(package)
    d = 100
    key = random.key(0)
    key, kx, kb, ky = random.split(key, 4)
    X = random.normal(kx, (n, d))
    beta = random.normal(kb, (d,))
    y = random.bernoulli(ky, nnx.sigmoid(X @ beta)).astype(jnp.int32)

    class MLP(nnx.Module):
        dtype: jnp.dtype = jnp.bfloat16 if default_backend() == "gpu" else jnp.float32

        def __init__(self, din: int, dmid: int, dout: int, *, rngs: nnx.Rngs) -> None:
            self.linear1 = nnx.Linear(din, dmid, dtype=self.dtype, rngs=rngs)
            self.linear2 = nnx.Linear(dmid, dmid, dtype=self.dtype, rngs=rngs)
            self.linear3 = nnx.Linear(dmid, dout, dtype=self.dtype, rngs=rngs)

        def __call__(self, x: Any) -> Array:
            x = nnx.relu(self.linear1(x))
            x = nnx.relu(self.linear2(x))
            return nnx.sigmoid(self.linear3(x)).squeeze()

    key, knn = random.split(key)
    module = MLP(din=d, dmid=32, dout=1, rngs=nnx.Rngs(params=knn))

    def model(X: Any, *, y: Any = None) -> None:
        nn_p = random_nnx_module("nn_p", nn_module=module, scope_divider="_", prior=dist.Normal())
        with plate("data", size=n, subsample_size=len(X)):
            p = nn_p(X)
            deterministic("p", p)
            sample("y", dist.Bernoulli(p), obs=y)

    key, km = random.split(key)
    guide = AutoNormal(model=model, init_loc_fn=init_to_uniform(radius=0.1))
    im = impact_model(
        model, rng_key=km, inference=SVI(model, guide, adam(learning_rate=1e-3), Trace_ELBO())
    )
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        im.fit(X, y, num_samples=draws, batch_size=2000, epochs=1, progress=False)
    return im, X


# ----------------------------------------------------------------------------- worker


def _settle() -> None:
    """Wait until no computation of the setup is still in flight."""
    import gc

    import jax.numpy as jnp

    (jnp.zeros(()) + 1).block_until_ready()
    gc.collect()


def _call(
    package: str, method: str, model: Any, X: Any, out: Path, key: Any
) -> tuple[float, float]:
    """Run one call to a complete result; return its seconds and CPU seconds (all threads)."""
    shifted = np.array(X, dtype=np.float32, copy=True)
    shifted[:, 0] += 1.0
    batch = {"batch_size": 100_000} if X.shape[0] > 10_000 else {}
    start, cpu = time.perf_counter(), time.process_time()
    if method == "predict":
        tree = model.predict(X, rng_key=key, output_dir=str(out), progress=False, **batch)
        assert tree is not None
    elif package == "dopax":
        result = model.compare_scenarios(
            X,
            {"base": {}, "shift": {"X": shifted}},
            baseline="base",
            rng_key=key,
            progress=False,
            **batch,
        )
        np.asarray(result.tree["draws"]["ate"].values)
    else:
        kw = {"rng_key": key, "output_dir": str(out), "progress": False, **batch}
        base = model.predict(X, **kw)
        shift = model.predict(shifted, **kw)
        effect = model.estimate_effect(output_baseline=base, output_intervention=shift)
        _, y_effect = common.find_variable(effect, "y")
        rows = [d for d in y_effect.dims if d not in ("chain", "draw")]
        np.asarray(y_effect.astype("float64").mean(dim=rows).values)
    return time.perf_counter() - start, time.process_time() - cpu


def worker(case: dict[str, Any]) -> dict[str, Any]:
    import importlib

    started = time.perf_counter()
    importlib.import_module("aimz" if case["package"] == "aimz" else "dopax")
    import_s = time.perf_counter() - started
    import jax

    package, model_name, method = case["package"], case["model"], case["method"]
    if package == "dopax_cache":
        from dopax.config import set_config

        set_config(compilation_cache_dir=case["cache_dir"])
        package = "dopax"
    n, draws = SIZES[model_name]
    setup = w1_setup if model_name == "w1" else bnn_setup
    model, X = setup(package, n, draws)
    X = np.asarray(X)
    _settle()
    out = common.make_temp_dir(case.get("workdir"), "w8-")
    try:
        first, first_cpu = _call(package, method, model, X, out / "1", jax.random.key(5))
        second, _ = _call(package, method, model, X, out / "2", jax.random.key(5))
    finally:
        shutil.rmtree(out, ignore_errors=True)
        model.cleanup()
    return {
        "import_s": import_s,
        "first_s": first,
        "first_cpu_s": first_cpu,
        "second_s": second,
        **case,
    }


# ----------------------------------------------------------------------------- driver


def run_case(python: str, case: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """One measurement: ``worker(case)`` in a fresh process of ``python``."""
    env = dict(os.environ)
    if case["package"].startswith("dopax"):
        src = str(common.REPO_ROOT / "src")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    else:
        env.pop("PYTHONPATH", None)
    script = str(Path(__file__).resolve())
    cmd = [python, script, "--worker", json.dumps(case)]
    return {**case, **common.run_worker(cmd, env=env, timeout=timeout)}


def run_workload(args: argparse.Namespace) -> dict[str, Any]:
    """Every model, method and package, ``--reps`` fresh processes each."""
    pythons = {"dopax": sys.executable, "dopax_cache": sys.executable, "aimz": args.aimz_python}
    cache_dir = str(common.make_temp_dir(args.workdir, "w8-jax-cache-"))
    results: list[dict[str, Any]] = []
    for model_name in args.models:
        for method in args.methods:
            if "dopax_cache" in args.packages:  # fill the cache, untimed
                fill = {"package": "dopax_cache", "model": model_name, "method": method}
                run_case(sys.executable, {**fill, "rep": -1, "cache_dir": cache_dir}, args.timeout)
            for rep in range(args.reps):
                # packages alternate within a repetition, so drifts of the machine hit both
                for package in args.packages:
                    if pythons.get(package) is None:
                        continue
                    case = {
                        "package": package,
                        "model": model_name,
                        "method": method,
                        "rep": rep,
                        "workdir": args.workdir,
                        "cache_dir": cache_dir,
                    }
                    res = run_case(str(pythons[package]), case, args.timeout)
                    results.append(res)
                    shown = (
                        f"import {res['import_s']:.2f} s, first {res['first_s']:.2f} s "
                        f"(CPU {res['first_cpu_s']:.2f} s), second {res['second_s']:.2f} s"
                        if res["status"] == "ok"
                        else f"{res['status']}: {res.get('reason')}"
                    )
                    print(f"{model_name} {method} {package} rep {rep}: {shown}", flush=True)
    shutil.rmtree(cache_dir, ignore_errors=True)
    params = common.pick(args, "reps", "models", "methods", "packages", "aimz_python", "workdir")
    return {"workload": NAME, "params": params, "results": results}


def report(payload: dict[str, Any]) -> str:
    """Best first call of each package, per model and method."""
    results = payload["results"]
    params = payload["params"]

    def best(package: str, model_name: str, method: str) -> float | None:
        times = [
            r["first_s"]
            for r in results
            if (r.get("package"), r.get("model"), r.get("method")) == (package, model_name, method)
            and r.get("status") == "ok"
        ]
        return min(times) if times else None

    rows = []
    for model_name in params["models"]:
        for method in params["methods"]:
            dopax, aimz = best("dopax", model_name, method), best("aimz", model_name, method)
            rows.append(
                [
                    model_name,
                    method,
                    dopax,
                    aimz,
                    common.ratio(dopax, aimz),
                    best("dopax_cache", model_name, method),
                ]
            )
    headers = [
        "model",
        "method",
        "dopax first s (best)",
        "aimz first s (best)",
        "dopax / aimz",
        "dopax, warm cache s",
    ]
    failed = [
        f"- {r['model']} {r['method']} {r['package']} rep {r['rep']}: {r.get('reason')}"
        for r in results
        if r.get("status") != "ok"
    ]
    return "\n".join(
        [
            f"### W8 first call: best of {params['reps']} fresh processes per case",
            "",
            common.markdown_table(headers, rows),
            *failed,
        ]
    )


def arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_options(parser, helps={"reps": "fresh processes per case"}, reps=2)
    parser.add_argument("--models", type=common.names, default=list(MODELS))
    parser.add_argument("--methods", type=common.names, default=list(METHODS))
    parser.add_argument("--packages", type=common.names, default=["dopax", "aimz", "dopax_cache"])
    parser.add_argument("--aimz-python", default=None, help="interpreter with aimz installed")
    common.add_options(
        parser,
        helps={"workdir": "folder for the outputs"},
        workdir=None,
        timeout=None,
        name=None,
        no_save=False,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:  # one measurement, in a fresh process
        common.emit_result({"status": "ok", **worker(json.loads(argv[1]))})
        return 0
    return int(common.workload_cli(NAME, arg_parser, run_workload, report)(argv))


if __name__ == "__main__":
    sys.exit(main())
