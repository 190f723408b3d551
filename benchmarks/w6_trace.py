"""W6: NUTS streamed to a resumable ZarrTrace against NumPyro's in-memory MCMC.run.

Logistic regression with 50 predictors on 20,000 rows; NUTS, 4 chains
(sequential), 1,000 warm-up iterations and 2,000 draws per chain;
``draws_per_chunk=100``. Cases, each in its own process:

- ``reference``: NumPyro's ``MCMC.run`` in memory (its draws are saved to
  compare with the trace's);
- ``trace``: ``ImpactModel.fit_on_batch(X, y, trace=ZarrTrace(...))`` with the
  same settings and key (kept on disk for ``resume``);
- ``trace_long``: the same with 20,000 draws per chain, for peak RSS;
- ``resume``: a traced run in a child process is killed with SIGKILL once every
  chain has done half its iterations; the timed call resumes it, and the
  finished trace is compared with ``trace``'s, bit for bit.

Every case runs once (one call, compile included, on each side): a call takes
minutes. Targets: trace <= 1.10 x reference; peak RSS of ``trace_long`` <= 1.1
x that of ``trace``; ``resume`` <= 0.55 x ``trace``; resumed draws identical.

Usage:
    python benchmarks/w6_trace.py --workdir /work/bench
    python benchmarks/w6_trace.py --quick      # tiny sizes, a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpyro
import numpyro.distributions as dist

try:
    from benchmarks import common
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    import common  # type: ignore[no-redef]

NAME = "w6_trace"
CASES = ("reference", "trace", "trace_long", "resume")
FULL = {"rows": 20_000, "predictors": 50, "num_warmup": 1_000, "draws": 2_000, "long_draws": 20_000}
QUICK = {"rows": 2_000, "predictors": 10, "num_warmup": 100, "draws": 200, "long_draws": 2_000}
CHAINS = 4
DRAWS_PER_CHUNK = 100
SEED = 6
TARGET_TIME = 1.10
TARGET_RSS = 1.1
TARGET_RESUME = 0.55


def kernel(X, y=None):
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 1.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=alpha + X @ beta), obs=y)


def training_data(rows: int, predictors: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows simulated from fixed true coefficients (identical in every process)."""
    X = common.make_X(rows, predictors, seed=1)
    rng = np.random.default_rng(2)
    beta = (0.3 * rng.standard_normal(predictors)).astype(np.float32)
    p = 1.0 / (1.0 + np.exp(-(0.2 + X @ beta)))
    y = (rng.random(rows) < p).astype(np.float32)
    return X, y


def this_module() -> Any:
    """This module under its import name.

    A worker runs it as ``__main__``; the kernel is taken from
    ``benchmarks.w6_trace`` in every process, since a trace records the
    kernel's module and name and resumes only with the same.
    """
    import importlib

    return importlib.import_module("benchmarks.w6_trace")


def make_mcmc(params: dict[str, Any], draws: int | None = None) -> Any:
    from numpyro.infer import MCMC, NUTS

    return MCMC(
        NUTS(this_module().kernel),
        num_warmup=int(params["num_warmup"]),
        num_samples=int(draws if draws is not None else params["draws"]),
        num_chains=CHAINS,
        chain_method="sequential",
        progress_bar=False,
    )


def fit_traced(params: dict[str, Any], trace: Any, draws: int | None = None) -> Any:
    import jax

    dopax = common.import_dopax()
    X, y = training_data(int(params["rows"]), int(params["predictors"]))
    model = dopax.ImpactModel(
        this_module().kernel, rng_key=jax.random.key(0), inference=make_mcmc(params, draws)
    )
    model.fit_on_batch(X, y, rng_key=jax.random.key(SEED), trace=trace, progress=False)
    return model


def shared_dir(params: dict[str, Any]) -> Path:
    """The folder where cases leave what later cases compare with."""
    path = Path(params["shared"])
    path.mkdir(parents=True, exist_ok=True)
    return path


def trace_values(trace: Any) -> dict[str, np.ndarray]:
    tree = trace.to_datatree()
    return {
        f"{group}/{name}": var.values
        for group in ("posterior", "sample_stats")
        for name, var in tree[group].data_vars.items()
    }


# ----------------------------------------------------------------------------
# Cases (run inside the worker process)
# ----------------------------------------------------------------------------


def build_reference(params: dict[str, Any]) -> common.Case:
    import jax

    X, y = training_data(int(params["rows"]), int(params["predictors"]))
    out = shared_dir(params) / "reference.npz"

    def call() -> Any:
        mcmc = make_mcmc(params)
        # As the model passes them: keyword arguments, JAX arrays.
        mcmc.run(jax.random.key(SEED), X=jax.numpy.asarray(X), y=jax.numpy.asarray(y))
        return jax.block_until_ready(mcmc.get_samples(group_by_chain=True))

    def finish(samples: Any) -> dict[str, Any]:
        np.savez(out, **{k: np.asarray(v) for k, v in samples.items()})
        return {"draws_per_chain": int(samples["alpha"].shape[1])}

    return common.Case(call=call, finish=finish, info={"input_bytes": int(X.nbytes)})


def build_trace(params: dict[str, Any], long: bool) -> common.Case:
    dopax = common.import_dopax()
    draws = int(params["long_draws"] if long else params["draws"])
    scratch = common.make_temp_dir(params.get("workdir"), "w6-trace-")
    keep = shared_dir(params) / "uninterrupted.zarr"

    def call() -> Any:
        path = scratch / f"trace-{time.monotonic_ns()}.zarr"
        trace = dopax.ZarrTrace(path, draws_per_chunk=DRAWS_PER_CHUNK)
        fit_traced(params, trace, draws)
        return path

    def finish(path: Path) -> dict[str, Any]:
        trace = dopax.ZarrTrace.open(path)
        extra: dict[str, Any] = {
            "status": trace.status,
            "disk_bytes": common.dir_bytes(path),
            "draws_per_chain": trace.num_samples,
        }
        reference = shared_dir(params) / "reference.npz"
        if not long and reference.exists():
            ref = np.load(reference)
            values = trace_values(trace)
            extra["identical_to_reference"] = all(
                np.array_equal(values[f"posterior/{k}"], ref[k]) for k in ref.files
            )
        if long:
            shutil.rmtree(path, ignore_errors=True)
        else:
            shutil.rmtree(keep, ignore_errors=True)
            shutil.move(str(path), keep)
        return extra

    return common.Case(call=call, finish=finish, close=common.closer(None, scratch))


_RUN_CHILD = """
import json, sys
from benchmarks import w6_trace
params = json.loads(sys.argv[1])
dopax = w6_trace.common.import_dopax()
trace = dopax.ZarrTrace(sys.argv[2], draws_per_chunk=w6_trace.DRAWS_PER_CHUNK)
w6_trace.fit_traced(params, trace)
"""


def build_resume(params: dict[str, Any]) -> common.Case:
    dopax = common.import_dopax()
    scratch = common.make_temp_dir(params.get("workdir"), "w6-resume-")
    half = (int(params["num_warmup"]) + int(params["draws"])) // 2
    state: dict[str, Any] = {}

    def interrupted_trace() -> Path:
        """Start a traced run in a child process and kill -9 it half-way."""
        path = scratch / f"trace-{time.monotonic_ns()}.zarr"
        child = subprocess.Popen(
            [sys.executable, "-c", _RUN_CHILD, json.dumps(params), str(path)],
            cwd=common.REPO_ROOT,
            env=common._child_env(),
        )
        try:
            while True:
                time.sleep(0.05)
                try:
                    done = dopax.ZarrTrace.open(path).iterations_done
                except FileNotFoundError:
                    done = ()
                if done and min(done) >= half:
                    child.send_signal(signal.SIGKILL)
                    break
                if child.poll() is not None:
                    raise RuntimeError(f"the traced run ended before half-way ({done})")
        finally:
            child.wait()
        state["killed_at"] = list(dopax.ZarrTrace.open(path).iterations_done)
        return path

    state["path"] = interrupted_trace()

    def call() -> Any:
        path = state.pop("path", None) or interrupted_trace()
        trace = dopax.ZarrTrace.open(path)
        status = trace.status
        fit_traced(params, trace)
        return path, status

    def finish(out: tuple[Path, str]) -> dict[str, Any]:
        path, status_before = out
        trace = dopax.ZarrTrace.open(path)
        extra: dict[str, Any] = {
            "status_before": status_before,
            "killed_at_iterations": state.get("killed_at"),
            "status": trace.status,
        }
        keep = shared_dir(params) / "uninterrupted.zarr"
        if keep.exists():
            ref = trace_values(dopax.ZarrTrace.open(keep))
            got = trace_values(trace)
            extra["identical_to_uninterrupted"] = ref.keys() == got.keys() and all(
                np.array_equal(got[k], ref[k]) for k in ref
            )
        shutil.rmtree(path, ignore_errors=True)
        return extra

    return common.Case(call=call, finish=finish, close=common.closer(None, scratch))


BUILDERS = {
    "reference": build_reference,
    "trace": lambda params: build_trace(params, long=False),
    "trace_long": lambda params: build_trace(params, long=True),
    "resume": build_resume,
}


# ----------------------------------------------------------------------------
# The parent side
# ----------------------------------------------------------------------------


def run_workload(args: argparse.Namespace) -> dict[str, Any]:
    """Run every case in its own process, in order; return the payload.

    Sizes are those of ``--quick`` or of the full run, as ``--rows``,
    ``--draws`` and ``--long-draws`` change them.
    """
    sizes = dict(QUICK if args.quick else FULL)
    for key in ("rows", "long_draws", "draws"):
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    shared = str(common.make_temp_dir(args.workdir, "w6-shared-"))
    # One timed call per case and no untimed one (`warmup` counts those).
    params = {**sizes, "workdir": args.workdir, "shared": shared, "reps": 1, "warmup": 0}
    try:
        results = {}
        for case in args.cases:
            results[case] = common.run_case(NAME, case, timeout=args.timeout, **params)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    return {"workload": NAME, "params": params, "results": results}


def report(payload: dict[str, Any]) -> str:
    """Markdown table and target checks for a W6 payload."""
    results = payload["results"]
    p = payload["params"]

    def identical(_key: str, res: dict[str, Any]) -> bool | None:
        extra = common.extra_of(res)
        return extra.get("identical_to_reference", extra.get("identical_to_uninterrupted"))

    long_rss = common.rss_of(results.get("trace_long"))
    rss = common.ratio(long_rss, common.rss_of(results.get("trace")))
    resume = results.get("resume", {}).get("extra", {})
    return common.report_text(
        f"### W6 trace: {p['rows']:,} rows x {p['predictors']} predictors, NUTS, {CHAINS} "
        f"chains, {p['num_warmup']:,} warm-up, {p['draws']:,} draws "
        f"({p['long_draws']:,} for trace_long), draws_per_chunk={DRAWS_PER_CHUNK}",
        common.timing_table(
            results, ["reference", "trace"], extra=[("identical", identical)], seconds="s"
        ),
        results,
        notes=[
            f"- resume: killed at iterations {resume.get('killed_at_iterations')} per chain "
            f"(status {resume.get('status_before')!r}), finished {resume.get('status')!r}"
        ],
        targets=[
            common.time_target(results, "trace", "reference", TARGET_TIME),
            common.target_line("peak RSS trace_long / trace", rss, TARGET_RSS),
            common.time_target(results, "resume", "trace", TARGET_RESUME),
            f"- resumed draws identical: {resume.get('identical_to_uninterrupted')}",
        ],
    )


def arg_parser() -> argparse.ArgumentParser:
    parser = common.base_arg_parser(
        __doc__.splitlines()[0],
        helps={"draws": f"draws per chain (default {FULL['draws']:,}; --quick: {QUICK['draws']})"},
        draws=None,
        cases=CASES,
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--long-draws", type=int, default=None)
    return parser


def results_name(args: argparse.Namespace) -> str:
    return NAME + ("-quick" if args.quick else "")


main = common.workload_cli(NAME, arg_parser, run_workload, report, BUILDERS, results_name)

if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
