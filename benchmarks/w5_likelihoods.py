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

import argparse
import warnings
from collections.abc import Callable
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
    make = _likelihoods()[likelihood]

    def kernel(X, y=None):
        w1_linear.linear_kernel(X, y, make)

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
    sites = tuple(params.get("return_sites", SITES))
    case = w1_linear.build_impact_model(
        "dopax",
        params,
        make_kernel(params["likelihood"]),
        zarr_input=zarr_input,
        check_site="mu" if "mu" in sites else sites[0],
    )
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


def run_workload(args: argparse.Namespace) -> dict[str, Any]:
    """Time and memory runs for every likelihood, each case in its own process.

    ``--reference-reps`` (default ``--reps``) sets the repetitions of ``Predictive``;
    with 1 it runs once with no warm-up call, its compile time included.
    """
    n, reps, timeout = args.n, args.reps, args.timeout
    ref_reps = reps if args.reference_reps is None else args.reference_reps
    results: dict[str, dict[str, Any]] = {}
    for likelihood in args.likelihoods:
        base = {"likelihood": likelihood, "draws": args.draws, "workdir": args.workdir}
        entry: dict[str, Any] = {}
        ref_params = {**base, "n": n, "reps": ref_reps, "warmup": 1 if ref_reps > 1 else 0}
        entry["predictive"] = common.run_case(NAME, "predictive", timeout=timeout, **ref_params)
        entry["dopax"] = common.run_case(NAME, "dopax", timeout=timeout, **base, n=n, reps=reps)
        for size in args.rss_sizes:
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
        if args.boundary_rows:
            entry["boundaries"] = common.run_case(
                NAME, "boundaries", timeout=timeout, **base, n=args.boundary_rows, reps=1, warmup=0
            )
        results[likelihood] = entry
    params = common.pick(args, "likelihoods", "n", "draws", "reps")
    params["reference_reps"] = ref_reps
    params.update(common.pick(args, "rss_sizes", "workdir", "boundary_rows"))
    return {"workload": NAME, "params": params, "results": results}


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

    def rss_ratio(entry: dict[str, Any]) -> float | None:
        rss = [common.rss_of(entry.get(f"rss_{s}")) for s in sizes]
        return common.ratio(rss[-1], rss[0]) if len(rss) > 1 else None

    def vs_predictive(entry: dict[str, Any]) -> float | None:
        return common.ratio(
            common.seconds_of(entry.get("dopax")), common.seconds_of(entry.get("predictive"))
        )

    def rss_at(size: int) -> common.Column:
        return (f"RSS GiB at {size:,} rows", lambda _key, e: common.rss_of(e.get(f"rss_{size}")))

    columns: list[common.Column] = [
        ("Predictive s", lambda _key, e: common.seconds_of(e.get("predictive"))),
        ("dopax s", lambda _key, e: common.seconds_of(e.get("dopax"))),
        ("x Predictive", lambda _key, e: vs_predictive(e)),
        ("dopax CPU s", lambda _key, e: common.cpu_seconds_of(e.get("dopax"))),
        ("Predictive RSS GiB", lambda _key, e: common.rss_of(e.get("predictive"))),
        ("dopax RSS GiB", lambda _key, e: common.rss_of(e.get("dopax"))),
        *[rss_at(s) for s in sizes],
        (
            f"RSS {sizes[-1]:,} / {sizes[0]:,}" if len(sizes) > 1 else "RSS ratio",
            lambda _key, e: rss_ratio(e),
        ),
        ("warnings", lambda _key, e: _warnings_of(e)),
    ]
    verdicts = []
    notes = []
    for likelihood, entry in payload["results"].items():
        ratio, rss = vs_predictive(entry), rss_ratio(entry)
        met = (
            ratio is not None
            and ratio <= TARGET_VS_PREDICTIVE
            and rss is not None
            and rss <= TARGET_RSS_RATIO
            and _warnings_of(entry) == 0
        )
        verdicts.append(f"- {likelihood}: {'met' if met else 'NOT met'}")
        for key, res in entry.items():
            if res.get("status") != "ok":
                notes.append(f"- {likelihood} {key}: {res.get('status')}: {res.get('reason', '')}")
    text = common.report_text(
        f"### W5 likelihoods: n = {params['n']:,} rows, {params['draws']:,} draws, "
        f"sites {', '.join(SITES)}; memory runs: {', '.join(RSS_SITES)} with X read from Zarr\n\n"
        f"Predictive: median of {params['reference_reps']} call(s)"
        + (" (no warm-up: compile time included)" if params["reference_reps"] == 1 else "")
        + f"; dopax: median of {params['reps']} calls after a warm-up call; "
        "memory runs: one call.",
        common.case_table(payload["results"], columns, "likelihood"),
        notes=notes,
        targets=verdicts,
        heading=f"Targets (each: <= {TARGET_VS_PREDICTIVE} x Predictive, RSS ratio <= "
        f"{TARGET_RSS_RATIO}, no warning):",
    )
    if params.get("boundary_rows"):
        text += "\n\n" + _boundary_table(payload)
    return text


def _boundary_table(payload: dict[str, Any]) -> str:
    def figure(key: str) -> Any:
        return lambda _key, e: (e.get("boundaries") or {}).get("extra", {}).get(key)

    def fraction(_key: str, entry: dict[str, Any]) -> float | None:
        extra = (entry.get("boundaries") or {}).get("extra", {})
        cells = extra.get("cells")
        return None if not cells else extra.get("y_cells_differing", 0) / cells

    columns: list[common.Column] = [
        ("cells", figure("cells")),
        ("mu cells differing", figure("mu_cells_differing")),
        ("mu max abs diff", figure("mu_max_abs_diff")),
        ("y cells differing", figure("y_cells_differing")),
        ("fraction", fraction),
        ("y differing where mu equal", figure("y_differing_where_mu_equal")),
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
            common.case_table(payload["results"], columns, "likelihood"),
        ]
    )


def arg_parser() -> argparse.ArgumentParser:
    parser = common.base_arg_parser(
        __doc__.splitlines()[0],
        helps={
            "n": "rows of the time runs",
            "rss_sizes": "comma-separated row counts of the memory runs ('' for none)",
        },
        draws=200,
        n=1_000_000,
        rss_sizes=RSS_SIZES,
    )
    parser.add_argument(
        "--likelihoods",
        type=common.names,
        default=list(LIKELIHOOD_NAMES),
        help="comma-separated names",
    )
    parser.add_argument(
        "--reference-reps",
        type=int,
        default=None,
        help="repetitions of Predictive (default --reps; 1 runs it once, no warm-up)",
    )
    parser.add_argument(
        "--boundary-rows",
        type=int,
        default=0,
        help="also compare draws cut into blocks of 1,000 and 777 rows, on this many rows",
    )
    return parser


main = common.workload_cli(NAME, arg_parser, run_workload, report, BUILDERS)

if __name__ == "__main__":
    raise SystemExit(main())
