"""Frequentist check of dopax's effect intervals on simulated data with known effects.

For each of ``--datasets`` simulated data sets (n rows, 3 covariates, a random
0/1 treatment ``t`` and an interaction with the first covariate), the true
outcome model is ``y = alpha + X @ beta + tau * t + gamma * t * X[:, 0] + noise``.
The estimand is the sample average treatment effect of setting ``t = 1``
versus ``t = 0`` for every row, ``tau + gamma * mean(X[:, 0])``, and the same
per group (``X[:, 0] > 0`` or not). dopax fits the model with SVI (full-rank
Gaussian guide), runs ``compare_scenarios`` and the script counts how often
the 95% HDI covers the truth. Run: ``python -m benchmarks.effect_coverage``.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoMultivariateNormal
from numpyro.optim import Adam

from dopax import ImpactModel

try:
    from benchmarks import common
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    import common  # type: ignore[no-redef]

TAU, GAMMA, SIGMA = 1.5, 0.8, 1.0


def kernel(X, t, y=None):
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 5.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 2.0).expand([X.shape[1]]).to_event(1))
    tau = numpyro.sample("tau", dist.Normal(0.0, 5.0))
    gamma = numpyro.sample("gamma", dist.Normal(0.0, 5.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    with numpyro.plate("rows", X.shape[0]):
        mu = numpyro.deterministic("mu", alpha + X @ beta + tau * t + gamma * t * X[:, 0])
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def one(seed: int, n: int, prob: float) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)).astype(np.float32)
    t = (rng.random(n) < 0.5).astype(np.float32)
    beta = rng.normal(size=3)
    y = 0.5 + X @ beta + TAU * t + GAMMA * t * X[:, 0] + SIGMA * rng.normal(size=n)
    group = np.where(X[:, 0] > 0, "high", "low")
    truth = TAU + GAMMA * X[:, 0].mean()
    truth_g = {g: TAU + GAMMA * X[group == g, 0].mean() for g in ("high", "low")}
    guide = AutoMultivariateNormal(kernel)
    model = ImpactModel(kernel, jax.random.key(seed), SVI(kernel, guide, Adam(0.02), Trace_ELBO()))
    model.fit_on_batch(
        X, y.astype(np.float32), t=t, num_steps=4000, num_samples=1000, progress=False
    )
    result = model.compare_scenarios(
        X,
        {"treated": {"t": np.ones(n, np.float32)}, "control": {"t": np.zeros(n, np.float32)}},
        baseline="control",
        by=group,
        t=t,
        progress=False,
    )
    table = result.summary(prob=prob)
    ate = table.loc[("ate", "treated - control")]
    out = {
        "truth": float(truth),
        "mean": float(ate["mean"]),
        "covered": float(ate["hdi_low"] <= truth <= ate["hdi_high"]),
    }
    for g, value in truth_g.items():
        row = table.loc[("ate_by_group", f"treated - control | {g}")]
        out[f"covered_{g}"] = float(row["hdi_low"] <= value <= row["hdi_high"])
        out[f"error_{g}"] = float(row["mean"] - value)
    return out


def run_workload(args: argparse.Namespace) -> dict[str, Any]:
    """Fit and compare every simulated data set; the coverage counts and mean errors."""
    started = time.perf_counter()
    rows = [one(seed, args.n, args.prob) for seed in range(args.datasets)]
    return {
        "datasets": args.datasets,
        "n": args.n,
        "prob": args.prob,
        "ate_covered": sum(r["covered"] for r in rows),
        "ate_mean_error": float(np.mean([r["mean"] - r["truth"] for r in rows])),
        "group_high_covered": sum(r["covered_high"] for r in rows),
        "group_low_covered": sum(r["covered_low"] for r in rows),
        "group_high_mean_error": float(np.mean([r["error_high"] for r in rows])),
        "group_low_mean_error": float(np.mean([r["error_low"] for r in rows])),
        "seconds": time.perf_counter() - started,
    }


def report(summary: dict[str, Any]) -> str:
    """The summary as JSON, a table of coverage, and the verdict."""
    added = ("machine", "command", "finished_at")  # by publish
    datasets, prob = summary["datasets"], summary["prob"]
    rows = [
        ["average treatment effect", summary["ate_covered"], summary["ate_mean_error"]],
        ["effect in group X0 > 0", summary["group_high_covered"], summary["group_high_mean_error"]],
        ["effect in group X0 <= 0", summary["group_low_covered"], summary["group_low_mean_error"]],
    ]
    headers = ["quantity", f"covered (of {datasets})", "mean error of the posterior mean"]
    return "\n".join(
        [
            json.dumps({k: v for k, v in summary.items() if k not in added}, indent=2),
            "",
            common.markdown_table(headers, rows),
            "",
            f"ATE {prob:.0%} intervals covered the truth in {summary['ate_covered']:.0f} of "
            f"{datasets} data sets (target: at least {0.9 * datasets:.0f}).",
        ]
    )


def arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", type=int, default=100)
    common.add_options(parser, helps={"n": "rows of each data set"}, n=500)
    parser.add_argument("--prob", type=float, default=0.95)
    common.add_options(parser, name=None, no_save=False)
    return parser


main = common.workload_cli("effect_coverage", arg_parser, run_workload, report)

if __name__ == "__main__":
    raise SystemExit(main())
