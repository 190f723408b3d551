"""W10: answers, not draws (``summarize`` and ``loo`` against persisting the draws).

W1's kernel, posterior and inputs (``benchmarks/w1_linear.py``), with an
observed ``y`` simulated from the parameters W1's training data came from.

Cases (each in its own process):
    predict           reference: W1's ``predict`` of ``y`` and ``mu``, persisted to Zarr.
    summarize         ``summarize`` of ``y`` and ``mu`` (mean, sd, 94% ETI per row), persisted.
    predictive_numpy  NumPyro ``Predictive`` in memory, then NumPy's mean, sd (ddof 1)
                      and 3%/97% quantiles per row (as far as it fits in memory).
    predictive        NumPyro ``Predictive`` with its draws left on the device (the GPU
                      reference: ``jax.block_until_ready``, nothing copied back).
    log_likelihood    reference: ``log_likelihood(X, y)`` persisted to Zarr.
    loo               ``loo(X, y)`` (persisted pointwise ``loo_i`` and ``pareto_k``).
    az_loo            NumPyro's ``log_likelihood`` matrix in memory, then ``arviz.loo``
                      (as far as it fits in memory).

``--rss-sizes`` adds untimed-reference memory runs of ``summarize`` and ``loo``
at each size (one timed call after the warm-up, as every case) for the
peak-RSS ratio of the largest to the smallest. With ``--inputs zarr`` the dopax
cases read ``X`` and ``y`` from Zarr arrays (100,000 rows a chunk, written under
``--workdir`` before the clock starts) block by block, as a job over stored
rows does, so neither is held by the process (at 10M rows ``X`` alone is
0.4 GB).

Usage:
    python benchmarks/w10_answers.py --n 1000000 --reps 3 --rss-sizes 100000,10000000
    python benchmarks/w10_answers.py --cases summarize,loo --rss-sizes 100000,10000000 \
        --inputs zarr --workdir /data/w10   # the memory runs only, rows from storage
    python benchmarks/w10_answers.py --quick   # a few minutes: 100k rows, RSS at 20k/200k
    python benchmarks/w10_answers.py --gpu      # on a GPU: 1M rows against Predictive on
                                                # the device, loo against log_likelihood
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

try:
    from benchmarks import common, w1_linear
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    import common  # type: ignore[no-redef]
    import w1_linear  # type: ignore[no-redef]

NAME = "w10_answers"
CASES = ("predict", "summarize", "predictive_numpy", "log_likelihood", "loo", "az_loo")
SITES = w1_linear.SITES
TARGET_SUMMARIZE_VS_PREDICT = 0.5
TARGET_SUMMARIZE_VS_NUMPY = 0.35
TARGET_RSS_RATIO = 1.1
TARGET_LOO_VS_LOG_LIK = 0.5
TARGET_LOO_RSS_GIB = 1.5
TARGET_SUMMARIZE_VS_DEVICE = 1.5


def observed(X: np.ndarray) -> np.ndarray:
    """``y`` from the parameters W1's training data were simulated with, in row chunks."""
    rng = np.random.default_rng(2)
    beta = rng.standard_normal(w1_linear.NUM_FEATURES).astype(np.float32)
    y = np.empty(len(X), np.float32)
    noise = np.random.default_rng(5)
    for start in range(0, len(X), 1_000_000):
        part = X[start : start + 1_000_000]
        eps = noise.standard_normal(len(part), dtype=np.float32)
        y[start : start + len(part)] = 1.0 + part @ beta + 0.5 * eps
    return y


def _setup(params: dict[str, Any]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    post = w1_linear.posterior(int(params.get("draws", 1000)))
    return post, common.make_X(int(params["n"]), w1_linear.NUM_FEATURES)


def _stored_rows(n: int, workdir: str) -> tuple[Any, Any]:
    """``X`` and its observed ``y`` as Zarr arrays under ``workdir`` (written 100k rows at once)."""
    import zarr

    folder = Path(workdir) / f"w10-rows-{n}"
    if not (folder / "y.zarr").exists():
        folder.mkdir(parents=True, exist_ok=True)
        X = w1_linear.make_X_zarr(n, w1_linear.NUM_FEATURES, str(folder))
        y = zarr.create_array(folder / "y.tmp.zarr", shape=(n,), chunks=(100_000,), dtype="float32")
        for start in range(0, n, 100_000):
            y[start : start + 100_000] = observed(X[start : start + 100_000])
        (folder / "y.tmp.zarr").rename(folder / "y.zarr")
    return (
        zarr.open_array(folder / "X.zarr", mode="r"),
        zarr.open_array(folder / "y.zarr", mode="r"),
    )


def _dopax_case(params: dict[str, Any], method: str) -> common.Case:
    """Time one persisted dopax call (``summarize``, ``log_likelihood`` or ``loo``)."""
    import jax

    common.import_impact_model("dopax")
    if params.get("inputs") == "zarr":
        post = w1_linear.posterior(int(params.get("draws", 1000)))
        X, y = _stored_rows(int(params["n"]), params.get("workdir") or ".")
    else:
        post, X = _setup(params)
        y = observed(X)
    model = common.new_impact_model("dopax", w1_linear.kernel, post)
    key = jax.random.key(2)
    kwargs: dict[str, Any] = {"progress": False, "rng_key": key, **common.batch_kwargs(params)}

    def produce(out_dir: Path) -> Any:
        if method == "summarize":
            return model.summarize(X, return_sites=SITES, output_dir=str(out_dir), **kwargs)
        if method == "loo":
            return model.loo(X, y, output_dir=str(out_dir), **kwargs)
        kwargs.pop("rng_key", None)
        return model.log_likelihood(X, y, output_dir=str(out_dir), **kwargs)

    def check(result: Any, _folder: Path) -> dict[str, Any]:
        if method == "summarize":
            last = float(result["summary"]["y_upper"][-1])
            return {"complete": bool(np.isfinite(last)), "batch_size": result.attrs["batch_size"]}
        if method == "loo":
            return {
                "elpd_loo": float(result.elpd_loo),
                "se": float(result.se),
                "p_loo": float(result.p_loo),
                "max_pareto_k": float(np.nanmax(result.pareto_k.values)),
                "complete": bool(np.isfinite(float(result.loo_i[-1]))),
            }
        return common.check_persisted(result, "y", (int(X.shape[0]),))

    return common.folder_case(
        produce,
        check,
        workdir=params.get("workdir"),
        prefix="w10-bench-",
        model=model,
        info={"input_bytes": int(X.nbytes), "inputs": params.get("inputs", "memory")},
    )


def build_predictive_numpy(params: dict[str, Any]) -> common.Case:
    """``Predictive`` in memory, then NumPy's per-row summaries of ``y`` and ``mu``."""
    import jax
    from numpyro.infer import Predictive

    post, X = _setup(params)
    predictive = Predictive(w1_linear.kernel, posterior_samples=post, return_sites=list(SITES))
    key = jax.random.key(2)

    def call() -> dict[str, np.ndarray]:
        draws = predictive(key, X)
        out = {}
        for site in SITES:
            values = np.asarray(draws.pop(site))
            out[f"{site}_mean"] = values.mean(axis=0)
            out[f"{site}_sd"] = values.std(axis=0, ddof=1)
            out[f"{site}_lower"], out[f"{site}_upper"] = np.quantile(values, [0.03, 0.97], axis=0)
            del values
        return out

    def finish(out: dict[str, np.ndarray]) -> dict[str, Any]:
        return {"complete": bool(np.isfinite(out["y_upper"][-1]))}

    return common.Case(call=call, finish=finish, info={"input_bytes": int(X.nbytes)})


def build_az_loo(params: dict[str, Any]) -> common.Case:
    """NumPyro's log-likelihood matrix in memory, then ``arviz.loo`` (pointwise)."""
    import warnings

    import arviz as az
    import xarray as xr
    from numpyro.infer import log_likelihood

    post, X = _setup(params)
    y = observed(X)

    def call() -> Any:
        ll = np.asarray(log_likelihood(w1_linear.kernel, post, X, y)["y"])
        data = xr.Dataset({"y": (("chain", "draw", "y_dim_0"), ll[None])})
        idata = az.InferenceData(log_likelihood=data)
        del ll
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return az.loo(idata, pointwise=True, reff=1.0)

    def finish(out: Any) -> dict[str, Any]:
        return {"elpd_loo": float(out.elpd_loo), "se": float(out.se), "p_loo": float(out.p_loo)}

    return common.Case(call=call, finish=finish, info={"input_bytes": int(X.nbytes)})


BUILDERS = {
    "predict": lambda params: w1_linear.build_impact_model("dopax", params),
    "summarize": lambda params: _dopax_case(params, "summarize"),
    "predictive_numpy": build_predictive_numpy,
    "predictive": w1_linear.build_predictive,
    "log_likelihood": lambda params: _dopax_case(params, "log_likelihood"),
    "loo": lambda params: _dopax_case(params, "loo"),
    "az_loo": build_az_loo,
}


# ----------------------------------------------------------------------------
# The parent side
# ----------------------------------------------------------------------------


def run_workload(args: argparse.Namespace) -> dict[str, Any]:
    """Run every case at ``--n`` rows, then ``summarize`` and ``loo`` at each RSS size.

    ``--quick`` and ``--gpu`` set the sizes and cases they name first.
    """
    if args.quick:
        args.n, args.rss_sizes = 100_000, args.rss_sizes or [20_000, 200_000]
    if args.gpu:
        args.n, args.cases = 1_000_000, ["predictive", "summarize", "log_likelihood", "loo"]
        args.workdir = args.workdir or "/tmp/dopax-bench"
    params = common.pick(args, "n", "reps", "draws", "workdir", "batch_size", "inputs")
    payload = common.cases_payload(
        NAME, args.cases, params, rounds=args.rounds, timeout=args.timeout
    )
    memory: dict[str, dict[str, Any]] = {}
    for size in args.rss_sizes:
        for case in ("summarize", "loo"):
            memory[f"{case}@{size}"] = common.run_case(
                NAME, case, timeout=args.timeout, **{**params, "n": size, "reps": 1}
            )
    payload["params"]["rss_sizes"] = list(args.rss_sizes)
    payload["memory"] = memory
    return payload


def report(payload: dict[str, Any]) -> str:
    """Markdown tables and target checks for a W10 payload."""
    results = payload["results"]
    p = payload["params"]
    notes = []
    memory = payload.get("memory") or {}
    if memory:
        mem_columns = [common.titled("s", common.SECONDS), common.PEAK_RSS, common.STATUS]
        notes += ["", common.case_table(memory, mem_columns, "case@rows")]
    targets = [
        common.time_target(results, "summarize", "predict", TARGET_SUMMARIZE_VS_PREDICT),
        common.time_target(
            results,
            "summarize",
            "predictive_numpy",
            TARGET_SUMMARIZE_VS_NUMPY,
            "summarize / (Predictive + NumPy)",
        ),
        common.time_target(results, "loo", "log_likelihood", TARGET_LOO_VS_LOG_LIK),
        common.time_target(
            results,
            "summarize",
            "predictive",
            TARGET_SUMMARIZE_VS_DEVICE,
            "summarize / Predictive on the device",
        ),
    ]
    sizes = p.get("rss_sizes") or []
    if len(sizes) >= 2:
        lo, hi = min(sizes), max(sizes)
        for case in ("summarize", "loo"):
            value = common.ratio(
                common.rss_of(memory.get(f"{case}@{hi}")), common.rss_of(memory.get(f"{case}@{lo}"))
            )
            targets.append(
                common.target_line(f"{case} peak RSS {hi:,} / {lo:,} rows", value, TARGET_RSS_RATIO)
            )
    if sizes:
        loo_rss = common.rss_of(memory.get(f"loo@{max(sizes)}"))
        targets.append(
            common.target_line(
                f"loo peak RSS GiB at {max(sizes):,} rows", loo_rss, TARGET_LOO_RSS_GIB
            )
        )
    return common.report_text(
        f"### W10 answers: n = {p['n']:,} rows, {p['draws']:,} draws, sites {', '.join(SITES)}",
        common.timing_table(results, ["predict", "log_likelihood"]),
        results,
        notes=notes,
        targets=targets,
        heading="Targets (same run):",
    )


def arg_parser() -> argparse.ArgumentParser:
    parser = common.base_arg_parser(
        __doc__.splitlines()[0],
        helps={
            "n": "rows of the timed cases",
            "batch_size": "rows per block",
            "rss_sizes": "comma-separated row counts for the memory runs",
        },
        n=1_000_000,
        cases=CASES,
        batch_size=None,
        rss_sizes=[],
        rounds=1,
    )
    parser.add_argument(
        "--inputs",
        choices=["memory", "zarr"],
        default="memory",
        help="where the dopax cases read X and y from (zarr: arrays under --workdir)",
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="a run of a few minutes: --n 100000, RSS at 20000 and 200000 rows",
    )  # fmt: skip
    parser.add_argument(
        "--gpu", action="store_true",
        help="the GPU run: --n 1000000 --cases predictive,summarize,log_likelihood,loo "
        "--workdir /tmp/dopax-bench",
    )  # fmt: skip
    return parser


main = common.workload_cli(NAME, arg_parser, run_workload, report, BUILDERS)

if __name__ == "__main__":
    raise SystemExit(main())
