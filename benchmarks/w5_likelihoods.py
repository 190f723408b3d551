"""W5: every likelihood streams in row blocks.

The W1 kernel (``alpha``, ``beta`` of size 10, ``sigma``; ``mu = alpha + X @
beta`` deterministic in a plate over rows) with its normal likelihood swapped
for each of ``Poisson``, ``NegativeBinomial2``, ``StudentT``, ``Beta``,
``Gamma``, ``BetaBinomial``, ``ZeroInflatedPoisson`` and ``Categorical`` in
turn, each with a link from ``mu`` (see ``LIKELIHOODS``). The posterior is
W1's (SVI on W1's training rows), so only the likelihood changes.

Cases (each in its own process):
    predictive        NumPyro ``Predictive`` of ``y`` and ``mu`` in memory.
    dopax             ``dopax.ImpactModel.predict`` of ``y`` and ``mu``, persisted.
    dopax_zarr_input  The same with ``X`` read block by block from Zarr (memory runs).

The time part runs ``predictive`` and ``dopax`` on ``--n`` rows; the memory
part runs ``dopax_zarr_input`` (``y`` only, as W4 does) at each of
``--rss-sizes`` and reports peak RSS at the largest size over the smallest.
Every dopax case records the warnings its calls emitted (a kernel that ran
with all rows together would say so).

Usage:
    python benchmarks/w5_likelihoods.py --n 1000000 --draws 200 --reps 3 \\
        --rss-sizes 100000,10000000 --workdir /work
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

try:
    from benchmarks import common, w1_linear
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    import common  # type: ignore[no-redef]
    import w1_linear  # type: ignore[no-redef]

NAME = "w5_likelihoods"
SITES = ("y", "mu")
RSS_SITES = ("y",)
RSS_SIZES = (100_000, 10_000_000)
TARGET_VS_PREDICTIVE = 0.75
TARGET_RSS_RATIO = 1.1


def _likelihoods() -> dict[str, Callable[[Any, Any], Any]]:
    import jax
    import jax.numpy as jnp
    import numpyro.distributions as dist

    def share(mu: Any) -> Any:
        return jax.nn.sigmoid(0.1 * mu)

    return {
        "poisson": lambda mu, sigma: dist.Poisson(jnp.exp(0.1 * mu)),
        "negbin2": lambda mu, sigma: dist.NegativeBinomial2(jnp.exp(0.1 * mu), 2.0),
        "student_t": lambda mu, sigma: dist.StudentT(4.0, mu, sigma),
        "beta": lambda mu, sigma: dist.Beta(10.0 * share(mu), 10.0 * (1.0 - share(mu))),
        "gamma": lambda mu, sigma: dist.Gamma(2.0, 2.0 / jnp.exp(0.1 * mu)),
        "beta_binomial": lambda mu, sigma: dist.BetaBinomial(
            10.0 * share(mu), 10.0 * (1.0 - share(mu)), 20
        ),
        "zip": lambda mu, sigma: dist.ZeroInflatedPoisson(0.3, jnp.exp(0.1 * mu)),
        "categorical": lambda mu, sigma: dist.Categorical(
            logits=jnp.stack([0.1 * mu, -0.1 * mu, jnp.zeros_like(mu)], axis=-1)
        ),
    }


LIKELIHOOD_NAMES = (
    "poisson",
    "negbin2",
    "student_t",
    "beta",
    "gamma",
    "beta_binomial",
    "zip",
    "categorical",
)


def make_kernel(likelihood: str) -> Callable[..., None]:
    """The W1 kernel with likelihood ``likelihood`` for ``y``."""
    import numpyro
    import numpyro.distributions as dist

    make = _likelihoods()[likelihood]

    def kernel(X, y=None):
        alpha = numpyro.sample("alpha", dist.Normal(0.0, 5.0))
        beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
        sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
        with numpyro.plate("obs", X.shape[0]):
            mu = numpyro.deterministic("mu", alpha + X @ beta)
            numpyro.sample("y", make(mu, sigma), obs=y)

    kernel.__name__ = f"w5_{likelihood}_kernel"
    return kernel


# ----------------------------------------------------------------------------
# Cases (run inside the worker process)
# ----------------------------------------------------------------------------


def build_predictive(params: dict[str, Any]) -> common.Case:
    return w1_linear.build_predictive(params, make_kernel(params["likelihood"]))


def _recording_warnings(case: common.Case) -> common.Case:
    """Wrap a case so that each repetition reports the warnings its call emitted."""
    seen: list[str] = []
    call, finish = case.call, case.finish

    def recorded_call() -> Any:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = call()
        seen.extend(f"{w.category.__name__}: {w.message}" for w in caught)
        return out

    def recorded_finish(out: Any) -> dict[str, Any]:
        extra = finish(out) if finish is not None else {}
        extra["warnings"] = list(seen)
        return extra

    case.call, case.finish = recorded_call, recorded_finish
    return case


def build_dopax(params: dict[str, Any], zarr_input: bool = False) -> common.Case:
    import shutil
    import tempfile

    common.import_impact_model("dopax")
    sites = tuple(params.get("return_sites", SITES))
    post = w1_linear.posterior(int(params["draws"]))
    n = int(params["n"])
    folder = None
    if zarr_input:
        folder = tempfile.mkdtemp(prefix="dopax-bench-input-", dir=params.get("workdir"))
        X: Any = w1_linear.make_X_zarr(n, w1_linear.NUM_FEATURES, folder)
    else:
        X = common.make_X(n, w1_linear.NUM_FEATURES)
    predict_kwargs: dict[str, Any] = {"return_sites": sites}
    if params.get("batch_size") is not None:
        predict_kwargs["batch_size"] = int(params["batch_size"])
    case = common.persisted_predict_case(
        "dopax",
        make_kernel(params["likelihood"]),
        post,
        X,
        check_site="mu" if "mu" in sites else sites[0],
        workdir=params.get("workdir"),
        predict_kwargs=predict_kwargs,
    )
    if folder is not None:
        close = case.close

        def close_and_remove_input() -> None:
            if close is not None:
                close()
            shutil.rmtree(folder, ignore_errors=True)

        case.close = close_and_remove_input
    return _recording_warnings(case)


def build_boundaries(params: dict[str, Any]) -> common.Case:
    """Draws of the same call cut into blocks of two sizes, compared cell by cell.

    Random bits are identical by construction; what can differ is the rounding
    of ``mu = alpha + X @ beta`` at another block shape, and through it a
    discrete draw or a rejection step's outcome. Reports the fraction of cells
    of ``mu`` that differ at all, its largest relative difference, and the
    fraction of cells of ``y`` that differ (exactly for integers; beyond
    ``rtol=1e-5`` for floats).
    """
    import numpy as np

    common.import_impact_model("dopax")
    post = w1_linear.posterior(int(params["draws"]))
    X = common.make_X(int(params["n"]), w1_linear.NUM_FEATURES)
    model = common.new_impact_model("dopax", make_kernel(params["likelihood"]), post)
    import jax

    key = jax.random.key(2)
    sizes = params.get("block_rows", [1000, 777])

    def call() -> list[dict[str, np.ndarray]]:
        outs = []
        for rows in sizes:
            tree = model.predict(
                X, rng_key=key, batch_size=rows, store="memory", return_sites=SITES, progress=False
            )
            outs.append({k: np.asarray(tree.posterior_predictive[k].values) for k in SITES})
        return outs

    def finish(outs: list[dict[str, np.ndarray]]) -> dict[str, Any]:
        a, b = outs
        mu_differs = a["mu"] != b["mu"]
        diff = np.abs(a["mu"] - b["mu"])
        if a["y"].dtype.kind == "f":
            y_differs = ~np.isclose(a["y"], b["y"], rtol=1e-5, atol=1e-6)
        else:
            y_differs = a["y"] != b["y"]
        return {
            "cells": int(a["y"].size),
            "block_rows": sizes,
            "mu_cells_differing": int(mu_differs.sum()),
            "mu_max_abs_diff": float(diff.max()),
            "y_cells_differing": int(y_differs.sum()),
            "y_differing_where_mu_equal": int((y_differs & ~mu_differs).sum()),
        }

    return common.Case(call=call, finish=finish)


BUILDERS = {
    "predictive": build_predictive,
    "dopax": build_dopax,
    "dopax_zarr_input": lambda params: build_dopax(params, zarr_input=True),
    "boundaries": build_boundaries,
}


# ----------------------------------------------------------------------------
# The parent side
# ----------------------------------------------------------------------------


def run_workload(
    *,
    likelihoods: Sequence[str] = LIKELIHOOD_NAMES,
    n: int = 1_000_000,
    draws: int = 200,
    reps: int = 3,
    reference_reps: int | None = None,
    rss_sizes: Sequence[int] = RSS_SIZES,
    workdir: str | None = None,
    timeout: float | None = None,
    boundary_rows: int = 0,
) -> dict[str, Any]:
    """Time and memory runs for every likelihood, each case in its own process.

    ``reference_reps`` (default ``reps``) sets the repetitions of ``Predictive``;
    with 1 it runs once with no warm-up call, its compile time included.
    """
    ref_reps = reps if reference_reps is None else reference_reps
    results: dict[str, dict[str, Any]] = {}
    for likelihood in likelihoods:
        base = {"likelihood": likelihood, "draws": draws, "workdir": workdir}
        entry: dict[str, Any] = {}
        ref_params = {**base, "n": n, "reps": ref_reps, "warmup": 1 if ref_reps > 1 else 0}
        entry["predictive"] = common.run_case(NAME, "predictive", timeout=timeout, **ref_params)
        entry["dopax"] = common.run_case(NAME, "dopax", timeout=timeout, **base, n=n, reps=reps)
        for size in rss_sizes:
            entry[f"rss_{size}"] = common.run_case(
                NAME,
                "dopax_zarr_input",
                timeout=timeout,
                **base,
                n=size,
                reps=1,
                warmup=0,
                return_sites=list(RSS_SITES),
            )
        if boundary_rows:
            entry["boundaries"] = common.run_case(
                NAME, "boundaries", timeout=timeout, **base, n=boundary_rows, reps=1, warmup=0
            )
        results[likelihood] = entry
    return {
        "workload": NAME,
        "params": {
            "likelihoods": list(likelihoods),
            "n": n,
            "draws": draws,
            "reps": reps,
            "reference_reps": ref_reps,
            "rss_sizes": list(rss_sizes),
            "workdir": workdir,
            "boundary_rows": boundary_rows,
        },
        "results": results,
    }


def _warnings_of(entry: dict[str, Any]) -> int | None:
    total = 0
    for key, res in entry.items():
        if key in ("predictive", "boundaries"):
            continue
        if not res or res.get("status") != "ok":
            return None
        for extra in res.get("extra_per_rep", []):
            total += len(extra.get("warnings", []))
    return total


def report(payload: dict[str, Any]) -> str:
    """Markdown table and target checks for a W5 payload."""
    params = payload["params"]
    sizes = params["rss_sizes"]
    rows = []
    verdicts = []
    for likelihood, entry in payload["results"].items():
        ref = common.seconds_of(entry.get("predictive"))
        sec = common.seconds_of(entry.get("dopax"))
        rss = [common.rss_of(entry.get(f"rss_{s}")) for s in sizes]
        rss_ratio = common.ratio(rss[-1], rss[0]) if len(rss) > 1 else None
        ratio = common.ratio(sec, ref)
        n_warn = _warnings_of(entry)
        rows.append(
            [
                likelihood,
                ref,
                sec,
                ratio,
                common.cpu_seconds_of(entry.get("dopax")),
                common.rss_of(entry.get("predictive")),
                common.rss_of(entry.get("dopax")),
                *rss,
                rss_ratio,
                n_warn,
            ]
        )
        met = (
            ratio is not None
            and ratio <= TARGET_VS_PREDICTIVE
            and rss_ratio is not None
            and rss_ratio <= TARGET_RSS_RATIO
            and n_warn == 0
        )
        verdicts.append(f"- {likelihood}: {'met' if met else 'NOT met'}")
    headers = [
        "likelihood",
        "Predictive s",
        "dopax s",
        "x Predictive",
        "dopax CPU s",
        "Predictive RSS GiB",
        "dopax RSS GiB",
        *[f"RSS GiB at {s:,} rows" for s in sizes],
        f"RSS {sizes[-1]:,} / {sizes[0]:,}" if len(sizes) > 1 else "RSS ratio",
        "warnings",
    ]
    notes = []
    for likelihood, entry in payload["results"].items():
        for key, res in entry.items():
            if res.get("status") != "ok":
                notes.append(f"- {likelihood} {key}: {res.get('status')}: {res.get('reason', '')}")
    lines = [
        f"### W5 likelihoods: n = {params['n']:,} rows, {params['draws']:,} draws, "
        f"sites {', '.join(SITES)}; memory runs: {', '.join(RSS_SITES)} with X read from Zarr",
        "",
        f"Predictive: median of {params['reference_reps']} call(s)"
        + (" (no warm-up: compile time included)" if params["reference_reps"] == 1 else "")
        + f"; dopax: median of {params['reps']} calls after a warm-up call; "
        "memory runs: one call.",
        "",
        common.markdown_table(headers, rows),
        *notes,
        "",
        f"Targets (each: <= {TARGET_VS_PREDICTIVE} x Predictive, RSS ratio <= "
        f"{TARGET_RSS_RATIO}, no warning):",
        *verdicts,
    ]
    if params.get("boundary_rows"):
        lines += ["", _boundary_table(payload)]
    return "\n".join(lines)


def _boundary_table(payload: dict[str, Any]) -> str:
    rows = []
    for likelihood, entry in payload["results"].items():
        extra = (entry.get("boundaries") or {}).get("extra", {})
        cells = extra.get("cells")
        rows.append(
            [
                likelihood,
                cells,
                extra.get("mu_cells_differing"),
                extra.get("mu_max_abs_diff"),
                extra.get("y_cells_differing"),
                None if not cells else extra.get("y_cells_differing", 0) / cells,
                extra.get("y_differing_where_mu_equal"),
            ]
        )
    headers = [
        "likelihood",
        "cells",
        "mu cells differing",
        "mu max abs diff",
        "y cells differing",
        "fraction",
        "y differing where mu equal",
    ]
    sizes = next(
        (e["boundaries"]["extra"].get("block_rows") for e in payload["results"].values()
         if e.get("boundaries", {}).get("extra")),
        None,
    )  # fmt: skip
    return "\n".join(
        [
            f"Same call in blocks of {sizes} rows, {payload['params']['boundary_rows']:,} rows:",
            "",
            common.markdown_table(headers, rows),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--case" in argv:
        return common.worker_main(NAME, BUILDERS, argv)
    parser = common.base_arg_parser(__doc__.splitlines()[0])
    parser.set_defaults(draws=200)
    parser.add_argument("--n", type=int, default=1_000_000, help="rows of the time runs")
    parser.add_argument(
        "--likelihoods", default=",".join(LIKELIHOOD_NAMES), help="comma-separated names"
    )
    parser.add_argument(
        "--reference-reps",
        type=int,
        default=None,
        help="repetitions of Predictive (default --reps; 1 runs it once, no warm-up)",
    )
    parser.add_argument(
        "--rss-sizes",
        default=",".join(str(s) for s in RSS_SIZES),
        help="comma-separated row counts of the memory runs ('' for none)",
    )
    parser.add_argument(
        "--boundary-rows",
        type=int,
        default=0,
        help="also compare draws cut into blocks of 1,000 and 777 rows, on this many rows",
    )
    args = parser.parse_args(argv)
    common.use_dopax_settings(args.set)
    machine = common.machine_info()
    payload = run_workload(
        likelihoods=[s for s in args.likelihoods.split(",") if s],
        n=args.n,
        draws=args.draws,
        reps=args.reps,
        reference_reps=args.reference_reps,
        rss_sizes=[int(s) for s in args.rss_sizes.split(",") if s],
        workdir=args.workdir,
        timeout=args.timeout,
        boundary_rows=args.boundary_rows,
    )
    common.publish(payload, machine, args, NAME, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
