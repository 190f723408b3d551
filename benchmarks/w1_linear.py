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

import argparse
from collections.abc import Callable
from pathlib import Path
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


def linear_kernel(X: Any, y: Any, likelihood: Callable[[Any, Any], Any]) -> None:
    """W1's priors and ``mu``, with ``y ~ likelihood(mu, sigma)`` in the plate over rows."""
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 5.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("obs", X.shape[0]):
        mu = numpyro.deterministic("mu", alpha + X @ beta)
        numpyro.sample("y", likelihood(mu, sigma), obs=y)


def kernel(X, y=None):
    linear_kernel(X, y, dist.Normal)


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
    post = posterior(int(params.get("draws", 1000)))
    X = common.make_X(int(params["n"]), NUM_FEATURES)
    return common.predictive_case(model or kernel, post, X, params.get("return_sites", SITES))


def build_impact_model(
    package: str,
    params: dict[str, Any],
    model: Any = None,
    *,
    zarr_input: bool = False,
    check_site: str | None = None,
) -> common.Case:
    """``<package>.ImpactModel.predict`` persisted, with W1's kernel or ``model``.

    With ``zarr_input`` the rows are read block by block from a Zarr array on
    disk (written during setup, deleted on close) instead of memory.
    """
    common.import_impact_model(package)  # skip early, before any work
    if package == "dopax" and params.get("compressor"):
        from dopax.config import set_config

        codec = params["compressor"]
        set_config(compressor=None if codec == "none" else codec)
    sites = tuple(params.get("return_sites", SITES))
    post = posterior(int(params.get("draws", 1000)))
    remove: list[Path] = []
    if zarr_input:
        folder = common.make_temp_dir(params.get("workdir"), "dopax-bench-input-")
        remove.append(folder)
        X: Any = make_X_zarr(int(params["n"]), NUM_FEATURES, str(folder))
    else:
        X = common.make_X(int(params["n"]), NUM_FEATURES)
    return common.persisted_predict_case(
        package,
        model or kernel,
        post,
        X,
        check_site=check_site or sites[0],
        workdir=params.get("workdir"),
        predict_kwargs={"return_sites": sites, **common.batch_kwargs(params)},
        remove=remove,
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


BUILDERS = {
    "dopax_zarr_input": lambda params: build_impact_model("dopax", params, zarr_input=True),
    "predictive": build_predictive,
    "dopax": lambda params: build_impact_model("dopax", params),
    "aimz": lambda params: build_impact_model("aimz", params),
}


# ----------------------------------------------------------------------------
# The parent side
# ----------------------------------------------------------------------------


def run_workload(args: argparse.Namespace) -> dict[str, Any]:
    """Run every case in its own process (``--rounds`` interleaved times); return the payload."""
    params = common.pick(args, "n", "reps", "draws", "workdir", "batch_size")
    if args.compressor is not None:
        params["compressor"] = args.compressor
    return common.cases_payload(NAME, args.cases, params, rounds=args.rounds, timeout=args.timeout)


def report(payload: dict[str, Any]) -> str:
    """Markdown table and target checks for a W1 payload."""
    results = payload["results"]
    params = payload["params"]
    return common.report_text(
        f"### W1 linear: n = {params['n']:,} rows, {params['draws']:,} draws, "
        f"sites {', '.join(SITES)}",
        common.timing_table(
            results, ["predictive", "aimz"], setup_rss=True, extra=[common.COMPLETE]
        ),
        results,
        notes=common.round_notes(results, "dopax", "predictive"),
        targets=[
            common.time_target(results, "dopax", "predictive", TARGET_VS_PREDICTIVE),
            common.time_target(results, "dopax", "aimz", TARGET_VS_AIMZ),
            common.target_line(
                "dopax peak RSS GiB", common.rss_of(results.get("dopax")), TARGET_RSS_GIB
            ),
        ],
    )


def arg_parser() -> argparse.ArgumentParser:
    parser = common.base_arg_parser(
        __doc__.splitlines()[0],
        helps={"n": "rows to predict on"},
        n=1_000_000,
        cases=CASES,
        batch_size=None,
        rounds=1,
    )
    parser.add_argument(
        "--compressor",
        default=None,
        help="dopax codec for this run: zstd, lz4 or none (default: dopax's own default)",
    )
    return parser


main = common.workload_cli(NAME, arg_parser, run_workload, report, BUILDERS)

if __name__ == "__main__":
    raise SystemExit(main())
