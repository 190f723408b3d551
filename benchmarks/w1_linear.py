"""W1: linear model, output-bound.

Kernel: ``alpha ~ Normal(0, 5)``, ``beta ~ Normal(0, 1)`` of size 10,
``sigma ~ HalfNormal(1)``; in a plate over rows ``mu = alpha + X @ beta``
(deterministic) and ``y ~ Normal(mu, sigma)``. Fit: SVI, AutoNormal, Adam(1e-2),
500 steps on 5,000 rows; 1,000 posterior draws. Run: predictive draws of ``y``
and ``mu`` on ``n`` standard-normal float32 rows.

Cases (each in its own process):
    predictive  NumPyro ``Predictive`` in memory, ``jax.block_until_ready``.
    dopax       ``dopax.ImpactModel.predict`` persisted to Zarr.
    aimz        ``aimz.ImpactModel.predict`` persisted to Zarr (when importable).

Usage:
    python benchmarks/w1_linear.py --n 1000000 --reps 3
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpyro
import numpyro.distributions as dist

try:
    from benchmarks import common
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    import common  # type: ignore[no-redef]

NAME = "w1_linear"
NUM_FEATURES = 10
TRAIN_ROWS = 5_000
FIT_STEPS = 500
SITES = ("y", "mu")
CASES = ("predictive", "dopax", "aimz")
TARGET_VS_PREDICTIVE = 0.75
TARGET_VS_AIMZ = 0.35
TARGET_RSS_GIB = 1.5


def kernel(X, y=None):
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 5.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("obs", X.shape[0]):
        mu = numpyro.deterministic("mu", alpha + X @ beta)
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def training_data() -> tuple[np.ndarray, np.ndarray]:
    """5,000 rows simulated from fixed true parameters."""
    X = common.make_X(TRAIN_ROWS, NUM_FEATURES, seed=1)
    rng = np.random.default_rng(2)
    beta = rng.standard_normal(NUM_FEATURES).astype(np.float32)
    noise = rng.standard_normal(TRAIN_ROWS).astype(np.float32)
    y = 1.0 + X @ beta + 0.5 * noise
    return X, y.astype(np.float32)


def posterior(num_draws: int) -> dict[str, np.ndarray]:
    """The W1 posterior draws (fixed keys: identical in every process)."""
    X, y = training_data()
    return common.fit_autonormal(kernel, X, y, num_steps=FIT_STEPS, num_draws=num_draws)


# ----------------------------------------------------------------------------
# Cases (run inside the worker process)
# ----------------------------------------------------------------------------


def build_predictive(params: dict[str, Any], model: Any = None) -> common.Case:
    """NumPyro ``Predictive`` of W1's posterior, with W1's kernel or ``model``."""
    import jax
    from numpyro.infer import Predictive

    sites = list(params.get("return_sites", SITES))
    post = posterior(int(params.get("draws", 1000)))
    X = common.make_X(int(params["n"]), NUM_FEATURES)
    predictive = Predictive(model or kernel, posterior_samples=post, return_sites=sites)
    key = jax.random.key(2)

    def call() -> dict[str, Any]:
        return jax.block_until_ready(predictive(key, X))

    def finish(out: dict[str, Any]) -> dict[str, Any]:
        return {"output_bytes": int(sum(v.nbytes for v in out.values()))}

    return common.Case(call=call, finish=finish, info={"input_bytes": int(X.nbytes)})


def build_impact_model(package: str, params: dict[str, Any]) -> common.Case:
    common.import_impact_model(package)  # skip early, before any work
    if package == "dopax" and params.get("compressor"):
        from dopax.config import set_config

        codec = params["compressor"]
        set_config(compressor=None if codec == "none" else codec)
    sites = tuple(params.get("return_sites", SITES))
    post = posterior(int(params.get("draws", 1000)))
    X = common.make_X(int(params["n"]), NUM_FEATURES)
    predict_kwargs: dict[str, Any] = {"return_sites": sites}
    if params.get("batch_size") is not None:
        predict_kwargs["batch_size"] = int(params["batch_size"])
    return common.persisted_predict_case(
        package,
        kernel,
        post,
        X,
        check_site=sites[0],
        workdir=params.get("workdir"),
        predict_kwargs=predict_kwargs,
    )


def make_X_zarr(n: int, d: int, folder: str) -> Any:
    """Write an (n, d) standard-normal float32 input to a Zarr array, 100k rows at a time."""
    import zarr

    arr = zarr.create_array(f"{folder}/X.zarr", shape=(n, d), chunks=(100_000, d), dtype="float32")
    for start in range(0, n, 100_000):
        stop = min(start + 100_000, n)
        rng = np.random.default_rng(start)
        arr[start:stop] = rng.standard_normal((stop - start, d), dtype=np.float32)
    return arr


def build_zarr_input(params: dict[str, Any]) -> common.Case:
    """dopax with the input read block by block from a Zarr array on disk."""
    import shutil
    import tempfile

    common.import_impact_model("dopax")
    sites = tuple(params.get("return_sites", SITES))
    post = posterior(int(params.get("draws", 1000)))
    folder = tempfile.mkdtemp(prefix="dopax-bench-input-", dir=params.get("workdir"))
    X = make_X_zarr(int(params["n"]), NUM_FEATURES, folder)
    predict_kwargs: dict[str, Any] = {"return_sites": sites}
    if params.get("batch_size") is not None:
        predict_kwargs["batch_size"] = int(params["batch_size"])
    case = common.persisted_predict_case(
        "dopax",
        kernel,
        post,
        X,
        check_site=sites[0],
        workdir=params.get("workdir"),
        predict_kwargs=predict_kwargs,
    )
    close = case.close

    def close_and_remove_input() -> None:
        if close is not None:
            close()
        shutil.rmtree(folder, ignore_errors=True)

    case.close = close_and_remove_input
    return case


BUILDERS = {
    "dopax_zarr_input": build_zarr_input,
    "predictive": build_predictive,
    "dopax": lambda params: build_impact_model("dopax", params),
    "aimz": lambda params: build_impact_model("aimz", params),
}


# ----------------------------------------------------------------------------
# The parent side
# ----------------------------------------------------------------------------


def run_workload(
    *,
    n: int = 1_000_000,
    reps: int = 3,
    draws: int = 1000,
    cases: Sequence[str] = CASES,
    workdir: str | None = None,
    batch_size: int | None = None,
    compressor: str | None = None,
    timeout: float | None = None,
    rounds: int = 1,
) -> dict[str, Any]:
    """Run every case in its own process (``rounds`` interleaved times); return the payload."""
    params = {"n": n, "reps": reps, "draws": draws, "workdir": workdir, "batch_size": batch_size}
    if compressor is not None:
        params["compressor"] = compressor
    results = common.run_cases(NAME, cases, rounds=rounds, timeout=timeout, **params)
    return {"workload": NAME, "params": {**params, "rounds": rounds}, "results": results}


def report(payload: dict[str, Any]) -> str:
    """Markdown table and target checks for a W1 payload."""
    results = payload["results"]
    n = payload["params"]["n"]
    ref = common.seconds_of(results.get("predictive"))
    aimz = common.seconds_of(results.get("aimz"))
    rows = []
    for case, res in results.items():
        sec = common.seconds_of(res)
        extra = res.get("extra", {})
        disk = extra.get("disk_bytes")
        rows.append(
            [
                case,
                sec,
                common.cpu_seconds_of(res),
                common.ratio(sec, ref),
                common.ratio(sec, aimz),
                common.setup_rss_of(res),
                common.rss_of(res),
                None if disk is None else disk / common.GB,
                extra.get("complete"),
                res.get("status"),
            ]
        )
    headers = [
        "case",
        "median s",
        "CPU s",
        "x predictive",
        "x aimz",
        "setup RSS GiB",
        "peak RSS GiB",
        "disk GB",
        "complete",
        "status",
    ]
    dopax = results.get("dopax", {})
    dopax_s = common.seconds_of(dopax)
    lines = [
        f"### W1 linear: n = {n:,} rows, {payload['params']['draws']:,} draws, "
        f"sites {', '.join(SITES)}",
        "",
        common.markdown_table(headers, rows),
        *common.status_notes(results),
        *common.round_notes(results, "dopax", "predictive"),
        "",
        "Targets:",
        common.target_line("dopax / predictive", common.ratio(dopax_s, ref), TARGET_VS_PREDICTIVE),
        common.target_line("dopax / aimz", common.ratio(dopax_s, aimz), TARGET_VS_AIMZ),
        common.target_line("dopax peak RSS GiB", common.rss_of(dopax), TARGET_RSS_GIB),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--case" in argv:
        return common.worker_main(NAME, BUILDERS, argv)
    parser = common.base_arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="rows to predict on")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated cases")
    parser.add_argument("--batch-size", type=int, default=None, help="predict batch_size")
    parser.add_argument(
        "--compressor",
        default=None,
        help="dopax codec for this run: zstd, lz4 or none (default: dopax's own default)",
    )
    common.add_rounds_argument(parser)
    args = parser.parse_args(argv)
    common.use_dopax_settings(args.set)
    machine = common.machine_info()
    payload = run_workload(
        n=args.n,
        reps=args.reps,
        draws=args.draws,
        cases=[c for c in args.cases.split(",") if c],
        workdir=args.workdir,
        batch_size=args.batch_size,
        timeout=args.timeout,
        rounds=args.rounds,
        compressor=args.compressor,
    )
    common.publish(payload, machine, args, NAME, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
