"""An interrupted time series on a panel: units with 52 weeks each, a treatment from week 40.

1. Simulate a panel: each unit has its own level (a per-unit random effect),
   a covariate, and AR(1) noise over 52 weeks; half of the units are treated
   from week 40 on, which raises their outcome by a known amount.
2. Fit the panel model with SVI (``AutoNormal``): the unit levels are
   per-row latents, time runs in a ``scan``, so the outcome site is
   ``(weeks, units)``.
3. Stream posterior-predictive draws for every unit, split by unit (the
   result keeps the site's ``(weeks, units)`` order, chunked along units).
4. Estimate the post-period effect on the treated units with
   ``compare_scenarios``: the units as observed against the same units with
   the treatment switched off (a scalar override of the ``treat`` input,
   broadcast over the weeks), on the mean outcome over the post-period weeks.
5. Print the recovered effect beside the true one and, with ``--plot``, draw
   the treated units' average outcome per week: observed, predicted as
   observed, and predicted with the treatment off (the counterfactual).

Run it with ``python examples/panel_its.py`` (2,000 units, a minute or so) or
``--units 20000`` for a larger panel; ``--plot panel_its.png`` saves the figure.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path
from typing import Any

import jax
import matplotlib
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.control_flow import scan
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.optim import Adam

from dopax import ImpactModel

matplotlib.use("Agg")

WEEKS = 52
START = 40  # the first treated week
EFFECT = 1.5  # what the treatment adds to a treated unit's weekly outcome
PHI = 0.6  # AR(1) coefficient of the noise
SIGMA = 0.8  # innovation sd


def panel(X: Any, treat: Any, window: Any, y: Any = None) -> None:
    """Outcome of unit i in week t: level_i + b * x_i + effect * treat_t * treated_i + AR(1).

    Args:
        X: ``(units, 2)``: a covariate and the treated flag.
        treat: ``(weeks,)``: 1 in the weeks the treatment is on.
        window: ``(weeks,)``: weights of the weeks ``post_mean`` averages over.
        y: ``(units, weeks)`` observed outcomes, or ``None``.
    """
    n = X.shape[0]
    a = numpyro.sample("a", dist.Normal(0.0, 5.0))
    b = numpyro.sample("b", dist.Normal(0.0, 2.0))
    tau = numpyro.sample("effect", dist.Normal(0.0, 5.0))
    spread = numpyro.sample("spread", dist.HalfNormal(2.0))
    phi = numpyro.sample("phi", dist.Uniform(-0.99, 0.99))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    with numpyro.plate("unit", n):
        level = numpyro.sample("level", dist.Normal(0.0, spread))  # one per unit
    mu = (a + level + b * X[:, 0])[None, :] + tau * treat[:, None] * X[None, :, 1]  # (T, n)

    def week(prev: Any, inputs: Any) -> Any:
        prev_mu, prev_y = prev
        mu_t, y_t = inputs
        with numpyro.plate("unit", n):
            y_new = numpyro.sample(
                "y", dist.Normal(mu_t + phi * (prev_y - prev_mu), sigma), obs=y_t
            )
        return (mu_t, y_new), y_new

    _, path = scan(week, (mu[0], mu[0]), (mu, None if y is None else y.T))
    numpyro.deterministic("post_mean", (window[:, None] * path).sum(0) / window.sum())


def simulate(n_units: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Return the panel: ``X``, ``y`` ``(units, weeks)``, ``treat`` and ``window``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n_units)
    treated = (rng.random(n_units) < 0.5).astype(np.float64)
    level = rng.normal(0.0, 1.0, n_units)
    treat = (np.arange(WEEKS) >= START).astype(np.float64)
    mu = (2.0 + level + 0.7 * x)[:, None] + EFFECT * treated[:, None] * treat[None, :]
    noise = np.zeros((n_units, WEEKS))
    noise[:, 0] = rng.normal(0.0, SIGMA / np.sqrt(1 - PHI**2), n_units)
    for t in range(1, WEEKS):
        noise[:, t] = PHI * noise[:, t - 1] + rng.normal(0.0, SIGMA, n_units)
    return {
        "X": np.stack([x, treated], axis=1).astype(np.float32),
        "y": (mu + noise).astype(np.float32),
        "treat": treat.astype(np.float32),
        "window": treat.astype(np.float32),  # the post-period weeks
    }


def run(
    n_units: int = 2_000,
    *,
    num_steps: int = 3_000,
    num_samples: int = 200,
    batch_size: int = 500,
    out: Path | None = None,
    plot: Path | None = None,
) -> dict[str, Any]:
    """Simulate, fit, predict and estimate the post-period effect; return what was found.

    Args:
        n_units: Units of the panel.
        num_steps: SVI steps.
        num_samples: Posterior draws.
        batch_size: Units per block of ``predict`` and ``compare_scenarios``.
        out: Folder for the predictions (a temporary one if ``None``).
        plot: Where to save the figure of the treated units' weekly averages
            (no figure if ``None``).
    """
    data = simulate(n_units)
    X, y, treat, window = data["X"], data["y"], data["treat"], data["window"]
    model = ImpactModel(
        panel,
        jax.random.key(0),
        SVI(panel, AutoNormal(panel), Adam(0.02), Trace_ELBO()),
    )
    inputs = {"treat": treat, "window": window}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The SVI loss was still falling")
        model.fit_on_batch(
            X, y, num_steps=num_steps, num_samples=num_samples, progress=False, **inputs
        )
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp) if out is None else out
        tree = model.predict(
            X, batch_size=batch_size, output_dir=where / "predict", progress=False, **inputs
        )
        y_draws = tree["posterior_predictive"]["y"]
        chunks = y_draws.encoding.get("chunks")
        mean_path = np.asarray(y_draws.mean(("chain", "draw")).values)  # (weeks, units)
        if plot is not None:
            untreated = model.predict(
                X,
                batch_size=batch_size,
                output_dir=where / "no_treatment",
                progress=False,
                treat=np.zeros_like(treat),
                window=window,
            )
            treated = X[:, 1] > 0
            paths = {
                "predicted, as observed": y_draws,
                "predicted, treatment off": untreated["posterior_predictive"]["y"],
            }
            _plot_treated(y[treated].mean(0), paths, treated, plot)
    result = model.compare_scenarios(
        X,
        {"as observed": {}, "no treatment": {"treat": 0.0}},
        baseline="no treatment",
        site="post_mean",
        by=np.where(X[:, 1] > 0, "treated", "untreated"),
        interval=0.95,
        batch_size=batch_size,
        progress=False,
        **inputs,
    )
    table = result.summary(prob=0.95, interval="eti")
    row = table.loc[("ate_by_group", "as observed - no treatment | treated")]
    untreated = table.loc[("ate_by_group", "as observed - no treatment | untreated")]
    return {
        "true": EFFECT,
        "estimate": float(row["mean"]),
        "low": float(row["eti_low"]),
        "high": float(row["eti_high"]),
        "untreated": float(untreated["mean"]),
        "shape": tuple(int(n) for n in y_draws.shape),
        "chunks": None if chunks is None else tuple(int(c) for c in chunks),
        "fit_error": float(np.abs(mean_path - y.T).mean()),
        "table": table,
    }


def _plot_treated(
    observed: np.ndarray, paths: dict[str, Any], treated: np.ndarray, where: Path
) -> None:
    """Save the treated units' weekly average: observed, and each prediction's 95% band."""
    import matplotlib.pyplot as plt

    weeks = np.arange(len(observed))
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(weeks, observed, color="black", lw=1.5, label="observed")
    for (label, draws), color in zip(paths.items(), ("C0", "C1"), strict=True):
        # average over the treated units, per draw and week: (chain, draw, week)
        unit = draws.dims[-1]  # the site is (chain, draw, week, unit)
        picked = draws.isel({unit: np.flatnonzero(treated)})
        average = np.asarray(picked.mean(unit).values)
        flat = average.reshape(-1, average.shape[-1])
        low, mid, high = np.quantile(flat, [0.025, 0.5, 0.975], axis=0)
        ax.plot(weeks, mid, color=color, label=label)
        ax.fill_between(weeks, low, high, color=color, alpha=0.3)
    ax.axvline(START - 0.5, color="grey", ls="--", lw=1)
    ax.set_xlabel("week")
    ax.set_ylabel("average outcome of the treated units")
    ax.legend(loc="upper left")
    fig.savefig(where, dpi=100, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--units", type=int, default=2_000)
    parser.add_argument("--steps", type=int, default=3_000)
    parser.add_argument("--plot", type=Path, default=None, help="save the figure here (PNG)")
    args = parser.parse_args()
    found = run(args.units, num_steps=args.steps, plot=args.plot)
    print(found["table"])
    print(f"\npredictions: {found['shape']} (chain, draw, week, unit), chunks {found['chunks']}")
    print(
        f"post-period effect on the treated units: {found['estimate']:.3f} "
        f"(95% interval {found['low']:.3f} to {found['high']:.3f}); true effect {found['true']}"
    )
    inside = found["low"] <= found["true"] <= found["high"]
    print("the true effect is " + ("inside" if inside else "OUTSIDE") + " the interval")


if __name__ == "__main__":
    main()
